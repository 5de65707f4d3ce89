"""The ``dreamloom`` command line: a thin layer over the library.

Each subcommand parses its flags, calls one library function and prints where to look.
Problems the user can fix (``DreamloomError``) are printed as one clear message, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamloom import __version__
from dreamloom.errors import DreamloomError


def main(argv: list[str] | None = None) -> int:
    from dreamloom.settings import apply_quiet_defaults

    apply_quiet_defaults()  # before the libraries are imported: some read these once, at import
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        args.handler(args)
    except DreamloomError as exc:
        print(f"dreamloom: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dreamloom: interrupted", file=sys.stderr)
        return 130
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamloom", description="Teach Stable Diffusion new concepts; serve them.")
    parser.add_argument("--version", action="version", version=f"dreamloom {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_train(commands)
    _add_prepare(commands)
    _add_generate_local(commands)
    _add_lora(commands)
    _add_hypernetwork(commands)
    _add_advise(commands)
    return parser


# ----- train -----


def _add_train(commands) -> None:
    command = commands.add_parser(
        "train",
        help="train an adapter or model on a folder of images",
        description="Train with one of the methods. Flags override the --config file; --set reaches any field.",
    )
    command.add_argument("--config", type=Path, help="run config YAML")
    command.add_argument(
        "--method", help="lora | dreambooth | dreambooth-lora | textual-inversion | hypernetwork | controlnet | pivotal"
    )
    command.add_argument("--base-model", help="hub id, local diffusers folder, tiny or tiny-sdxl")
    command.add_argument("--revision", help="hub revision of the base model")
    command.add_argument("--data", help="folder of instance images (captions as name.txt)")
    command.add_argument("--instance-prompt", help="prompt for images without a caption")
    command.add_argument("--class-prompt", help="class prompt for prior preservation")
    command.add_argument("--resolution", type=int)
    command.add_argument("--steps", type=int)
    command.add_argument("--batch-size", type=int)
    command.add_argument("--workers", type=int, help="Ray Train workers (DDP)")
    command.add_argument("--gpus-per-worker", type=float)
    command.add_argument("--output", help="folder for the final artifact")
    command.add_argument("--placeholder-token", help="textual-inversion/pivotal: the new token, e.g. <sks-shoe>")
    command.add_argument("--num-vectors", type=int, help="textual-inversion/pivotal: vectors behind the token")
    command.add_argument("--initializer-token", help="textual-inversion/pivotal: an existing word to start from")
    command.add_argument(
        "--condition", help="controlnet: canny | scribble | mask (name.mask.png) | user (name.cond.png)"
    )
    command.add_argument("--run-name", help="names the run for resuming (default: the output folder's name)")
    command.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    command.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. lora.rank=8"
    )
    command.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    command.set_defaults(handler=_train)


def _train(args) -> None:
    from dreamloom.config import FLAG_FIELDS, dump_run_config, load_run_config, parse_override

    overrides = dict(parse_override(item) for item in args.set)
    for flag, field in FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    config = load_run_config(args.config, overrides)
    if args.print_config:
        print(dump_run_config(config), end="")
        return
    from dreamloom.logs import quiet_library_logging
    from dreamloom.settings import tracking_uri
    from dreamloom.training.launcher import train

    quiet_library_logging()
    result = train(config, resume=args.resume)
    if result.resumed_from_step:
        print(f"\nresumed from step {result.resumed_from_step}; finished at step {result.steps}")
    print(f"\nartifact:      {result.artifact}")
    print(f"sample grid:   {result.artifact / 'samples' / 'final.png'}")
    print(f"MLflow run:    {result.mlflow_run_id} ({tracking_uri()})")
    if tracking_uri().startswith("sqlite:"):
        print(f"open the UI:   mlflow ui --backend-store-uri {tracking_uri()}")


# ----- prepare -----


def _add_prepare(commands) -> None:
    command = commands.add_parser("prepare", help="validate and prepare a folder of training images")
    command.add_argument("--data", type=Path, required=True, help="folder of instance images")
    command.add_argument("--out", type=Path, required=True, help="folder for the prepared set")
    command.add_argument("--resolution", type=int, default=512)
    command.add_argument("--bucketing", action="store_true", help="aspect-ratio buckets instead of center crops")
    command.add_argument("--max-image-pixels", type=int, default=50_000_000)
    command.set_defaults(handler=_prepare)


def _prepare(args) -> None:
    from dreamloom.data import PrepareOptions, prepare_dataset

    options = PrepareOptions(args.resolution, args.bucketing, None, args.max_image_pixels)
    dataset = prepare_dataset(args.data, args.out, options)
    print(f"prepared {len(dataset.items)} images into {dataset.root} ({dataset.dataset_hash})")


# ----- generate-local -----


def _add_generate_local(commands) -> None:
    command = commands.add_parser("generate-local", help="render images from an artifact in this process")
    command.add_argument("--artifact", type=Path, required=True, help="artifact folder (with dreamloom.json)")
    command.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    command.add_argument("--negative-prompt")
    command.add_argument("--num-images", type=int, default=4, help="images per prompt")
    command.add_argument("--steps", type=int, default=25)
    command.add_argument("--guidance", type=float, default=7.5)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--size", help="WxH (default: the training resolution)")
    command.add_argument("--scale", type=float, help="LoRA scale / hypernetwork strength (default: as trained)")
    command.add_argument("--control-image", type=Path, help="controlnet: the condition image to follow")
    command.add_argument(
        "--control-from-photo", action="store_true", help="controlnet: extract the condition (canny/scribble) from it"
    )
    command.add_argument("--control-scale", type=float, help="controlnet: conditioning scale (default: as trained)")
    command.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    command.add_argument("--out", type=Path, required=True)
    command.set_defaults(handler=_generate_local)


def _generate_local(args) -> None:
    from dreamloom.inference import GenerationRequest, generate, load_artifact_pipeline, save_images
    from dreamloom.logs import quiet_library_logging

    width, height = _parse_size(args.size)
    quiet_library_logging()
    pipe, manifest = load_artifact_pipeline(args.artifact, args.scale, args.device)
    request = GenerationRequest(
        prompts=args.prompt,
        negative_prompt=args.negative_prompt,
        images_per_prompt=args.num_images,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        width=width,
        height=height,
        **_control(args, manifest),
    )
    pipe.set_progress_bar_config(disable=not sys.stderr.isatty())
    grid = save_images(generate(pipe, request, manifest.resolution), request, args.out)
    print(f"images in {args.out}; grid: {grid}")


def _control(args, manifest) -> dict:
    if args.control_image is None:
        return {}
    from dreamloom.data import conditions
    from dreamloom.data.images import ImageProblem, open_rgb

    try:
        image = open_rgb(args.control_image, 50_000_000)
    except ImageProblem as exc:
        raise DreamloomError(f"--control-image {args.control_image}: {exc}") from None
    settings = manifest.config.get("controlnet", {})
    if args.control_from_photo:
        kind = settings.get("condition")
        if kind not in conditions.EXTRACTED:
            raise DreamloomError(f"--control-from-photo extracts canny or scribble; this ControlNet follows {kind!r}")
        image = conditions.extract(image, kind, settings.get("canny_low", 100), settings.get("canny_high", 200))
    scale = args.control_scale if args.control_scale is not None else settings.get("conditioning_scale", 1.0)
    return {"control_image": image, "control_scale": scale}


def _parse_size(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise DreamloomError(f"--size expects WIDTHxHEIGHT such as 512x512, got {text!r}") from None
    return width, height


# ----- lora format conversions -----


def _add_lora(commands) -> None:
    lora = commands.add_parser("lora", help="LoRA format conversions (kohya / A1111)")
    actions = lora.add_subparsers(title="actions", metavar="ACTION")
    export = actions.add_parser("export-kohya", help="write a LoRA artifact as a kohya/A1111 safetensors file")
    export.add_argument("artifact", type=Path)
    export.add_argument("--out", type=Path, required=True, help="target .safetensors file")
    export.set_defaults(handler=_export_kohya)
    imported = actions.add_parser("import-kohya", help="make a dreamloom LoRA artifact from a kohya-format file")
    imported.add_argument("file", type=Path)
    imported.add_argument("--base-model", required=True)
    imported.add_argument("--output", type=Path, required=True)
    imported.add_argument("--trigger-token")
    imported.set_defaults(handler=_import_kohya)


def _export_kohya(args) -> None:
    from dreamloom.methods.kohya import export_kohya

    print(f"wrote {export_kohya(args.artifact, args.out)}")


def _import_kohya(args) -> None:
    from dreamloom.logs import quiet_library_logging
    from dreamloom.methods.kohya import import_kohya

    quiet_library_logging()
    import_kohya(args.file, args.base_model, args.output, args.trigger_token)
    print(f"imported {args.file} as {args.output}")


def _add_hypernetwork(commands) -> None:
    hypernetwork = commands.add_parser("hypernetwork", help="A1111 hypernetwork conversions")
    actions = hypernetwork.add_subparsers(title="actions", metavar="ACTION")
    imported = actions.add_parser(
        "import-a1111", help="make a dreamloom artifact from an A1111 .pt hypernetwork (read without running code)"
    )
    imported.add_argument("file", type=Path)
    imported.add_argument("--base-model", required=True)
    imported.add_argument("--output", type=Path, required=True)
    imported.set_defaults(handler=_import_a1111)


def _import_a1111(args) -> None:
    from dreamloom.methods.hypernetwork import import_a1111

    import_a1111(args.file, args.base_model, args.output)
    print(f"imported {args.file} as {args.output}")


# ----- advise -----

QUESTIONS = {
    "concepts": ("How many concepts will you teach", int),
    "fine_detail": ("Does fine detail matter (logos, faces, stitching)", bool),
    "new_to_base": ("Is the concept new to the base model (it cannot draw it today)", bool),
    "style": ("Is it a style rather than an object", bool),
    "spatial_control": ("Must images follow a layout, pose or sketch", bool),
}


def _add_advise(commands) -> None:
    command = commands.add_parser(
        "advise",
        help="recommend a method for your concept, with sizes for your base",
        description="Unanswered questions are asked interactively when the terminal allows, else take defaults.",
    )
    command.add_argument("--base-model", default="sd15", help="sd15, sd21, sdxl, a hub id of those, or a folder")
    command.add_argument("--concepts", type=int)
    for flag in ("fine-detail", "new-to-base", "style", "spatial-control"):
        command.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None)
    command.add_argument("--storage-mb", type=float, help="storage budget per concept in MB")
    command.add_argument("--gpu-gb", type=float, help="GPU memory for training in GB")
    command.add_argument("--json", action="store_true", help="print the recommendation as JSON")
    command.set_defaults(handler=_advise)


def _advise(args) -> None:
    import json

    from dreamloom.advisor import Needs, recommend
    from dreamloom.logs import quiet_library_logging
    from dreamloom.sizing import Architecture, human_bytes

    answers = {}
    for name, (question, kind) in QUESTIONS.items():
        value = getattr(args, name)
        if value is None and sys.stdin.isatty():
            value = _ask(question, kind)
        if value is not None:
            answers[name] = value
    if answers.get("concepts", 1) < 1:
        raise DreamloomError("--concepts must be at least 1")
    needs = Needs(**answers, storage_mb_per_concept=args.storage_mb, gpu_memory_gb=args.gpu_gb)
    quiet_library_logging()
    architecture = Architecture.for_base(args.base_model)
    advice = recommend(needs, architecture)
    if args.json:
        rows = {m: {"trainable_params": e.trainable_params, "artifact_bytes": e.artifact_bytes,
                    "training_state_bytes": e.training_state_bytes} for m, e in advice.estimates.items()}  # fmt: skip
        print(
            json.dumps({"method": advice.method, "reasons": advice.reasons, "notes": advice.notes, "estimates": rows})
        )
        return
    print(
        f"recommended: {advice.method}  (base: {architecture.name}, {architecture.total_params / 1e9:.2f}B parameters)"
    )
    for reason in advice.reasons + advice.notes:
        print(f"  - {reason}")
    print(f"\n{'method':<18} {'trains':>14} {'artifact':>10} {'training state*':>16}")
    for method, row in advice.estimates.items():
        marker = " <" if method == advice.method else ""
        print(f"{method:<18} {row.trainable_params:>14,} {human_bytes(row.artifact_bytes):>10} "
              f"{human_bytes(row.training_state_bytes):>16}{marker}")  # fmt: skip
    print("* weights (frozen in bf16), gradients and AdamW state; activations come on top "
          "(reduce them with gradient checkpointing and a smaller batch)")  # fmt: skip


def _ask(question: str, kind):
    suffix = " [number]" if kind is int else " [y/n]"
    while True:
        reply = input(f"{question}?{suffix} ").strip().lower()
        if kind is int and reply.isdigit():
            return int(reply)
        if kind is bool and reply in ("y", "yes", "n", "no"):
            return reply.startswith("y")
        if not reply:
            return None


if __name__ == "__main__":
    sys.exit(main())
