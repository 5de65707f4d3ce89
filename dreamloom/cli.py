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
        code = args.handler(args)
    except DreamloomError as exc:
        print(f"dreamloom: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dreamloom: interrupted", file=sys.stderr)
        return 130
    return code or 0


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
    _add_evaluate(commands)
    _add_registry(commands)
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


# ----- evaluate and registry -----


def _add_eval_options(command) -> None:
    group = command.add_argument_group("evaluation")
    group.add_argument("--references", type=Path, help="real images of the subject (default: the training folder)")
    group.add_argument("--subject", help="what {} becomes in the prompts (default: from the instance prompt)")
    group.add_argument("--kind", choices=["object", "live", "style"], help="which prompt templates")
    group.add_argument("--prompts-file", type=Path, help="own templates, one per line, each with {}")
    group.add_argument("--class-word", help="CLIP-T reads prompts with the subject replaced by this word")
    group.add_argument("--images-per-prompt", type=int)
    group.add_argument("--eval-steps", type=int, dest="eval_steps", help="denoising steps per image")
    group.add_argument("--eval-seed", type=int, dest="eval_seed")
    group.add_argument("--clip-encoder", help="hub id or tiny-clip (default: by base model)")
    group.add_argument("--dino-encoder", help="hub id or tiny-dino (default: by base model)")


def _eval_overrides(args) -> dict:
    prompts = None
    if args.prompts_file:
        if not args.prompts_file.is_file():
            raise DreamloomError(f"--prompts-file {args.prompts_file} does not exist")
        prompts = tuple(line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip())
    return {
        "subject": args.subject,
        "kind": args.kind,
        "prompts": prompts,
        "class_word": args.class_word,
        "images_per_prompt": args.images_per_prompt,
        "steps": args.eval_steps,
        "seed": args.eval_seed,
        "clip_encoder": args.clip_encoder,
        "dino_encoder": args.dino_encoder,
    }


def _add_evaluate(commands) -> None:
    command = commands.add_parser(
        "evaluate", help="prompt and subject fidelity (CLIP-T, CLIP-I, DINO) and diversity, logged to MLflow"
    )
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--artifact", type=Path, help="an artifact folder")
    source.add_argument("--model", help="a registered version: NAME@ALIAS or NAME/VERSION")
    command.add_argument("--attach", action="store_true", help="with --model: store the metrics on the version")
    command.add_argument("--out", type=Path, help="also write the grids and metrics here")
    _add_eval_options(command)
    command.set_defaults(handler=_evaluate)


def _run_evaluation(artifact: Path, args, what: dict):
    from dreamloom.evaluation import evaluate_artifact, log_evaluation
    from dreamloom.logs import quiet_library_logging
    from dreamloom.registry import Evaluation

    quiet_library_logging()
    result, settings = evaluate_artifact(artifact, args.references, **_eval_overrides(args))
    run_id = log_evaluation(result, settings, what)
    print(f"evaluated {len(result.per_prompt)} prompts x {settings.images_per_prompt} images of {settings.subject!r}")
    for metric, value in result.metrics.items():
        print(f"  {metric:<10} {value:8.4f}")
    print(f"  encoders: CLIP {result.encoders['clip']}, DINO {result.encoders['dino']}; MLflow run {run_id}")
    encoders = (result.encoders["clip"], result.encoders["dino"])
    return result, Evaluation(result.metrics, encoders, run_id, tuple(result.grids))


def _evaluate(args) -> None:
    import json

    from dreamloom.registry import attach_evaluation, download_artifact, resolve

    version = None
    if args.model:
        version = resolve(args.model)
        artifact = download_artifact(version)
        what = {
            "evaluated": f"{version.name}-v{version.version}",
            "model": version.name,
            "model_version": str(version.version),
        }
    else:
        artifact = args.artifact
        what = {"evaluated": Path(artifact).name, "artifact": str(Path(artifact).absolute())}
    result, evaluation = _run_evaluation(artifact, args, what)
    if args.attach:
        if version is None:
            raise DreamloomError("--attach stores metrics on a registered version; use it with --model")
        attach_evaluation(version, evaluation)
        print(f"  attached to {version.name} v{version.version}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for index, (_, grid) in enumerate(result.grids):
            grid.save(args.out / f"prompt_{index:02d}.png")
        (args.out / "evaluation.json").write_text(
            json.dumps(
                {"metrics": result.metrics, "per_prompt": result.per_prompt, "encoders": result.encoders}, indent=1
            )
        )


def _add_registry(commands) -> None:
    registry = commands.add_parser("registry", help="register, list, promote and roll back model versions (MLflow)")
    actions = registry.add_subparsers(title="actions", metavar="ACTION")
    register = actions.add_parser("register", help="a new version of NAME from an artifact folder")
    register.add_argument("--artifact", type=Path, required=True)
    register.add_argument("--name", required=True)
    how = register.add_mutually_exclusive_group()
    how.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="register without metrics")
    how.add_argument("--eval-run", help="take the metrics of this evaluation run instead of evaluating now")
    _add_eval_options(register)
    register.set_defaults(handler=_register)
    listing = actions.add_parser("list", help="versions with method, metrics, aliases and age")
    listing.add_argument("name", nargs="?")
    listing.set_defaults(handler=_list)
    promote = actions.add_parser("promote", help="make a version challenger, and champion if it passes the gate")
    promote.add_argument("name")
    promote.add_argument("--version", required=True)
    promote.add_argument("--gate", type=Path, help="gate YAML: metrics, thresholds, tolerance")
    promote.add_argument("--force", action="store_true", help="promote even if the gate refuses (needs --reason)")
    promote.add_argument("--reason")
    promote.set_defaults(handler=_promote)
    rollback = actions.add_parser("rollback", help="move champion back to the previous champion")
    rollback.add_argument("name")
    rollback.set_defaults(handler=_rollback)


def _register(args) -> None:
    from dreamloom.registry import register
    from dreamloom.registry.store import check_registrable, client

    check_registrable(args.artifact, args.name, client())  # refuse before spending time on evaluation
    evaluation = None
    if args.eval_run:
        evaluation = _evaluation_of_run(args.eval_run)
    elif args.evaluate:
        _, evaluation = _run_evaluation(
            args.artifact, args, {"evaluated": Path(args.artifact).name, "artifact": str(args.artifact)}
        )
    version = register(args.artifact, args.name, evaluation)
    print(f"registered {args.name} version {version.version}")


def _evaluation_of_run(run_id: str):
    from mlflow.exceptions import MlflowException

    from dreamloom.evaluation import METRICS
    from dreamloom.registry import Evaluation
    from dreamloom.registry.store import client

    try:
        run = client().get_run(run_id)
    except MlflowException as exc:
        raise DreamloomError(f"no evaluation run {run_id}: {exc.message}") from None
    metrics = {name: run.data.metrics[name] for name in METRICS if name in run.data.metrics}
    if not metrics:
        raise DreamloomError(f"run {run_id} holds no evaluation metrics")
    encoders = (
        run.data.tags.get("dreamloom.eval.clip_encoder", ""),
        run.data.tags.get("dreamloom.eval.dino_encoder", ""),
    )
    return Evaluation(metrics, encoders, run_id)


def _list(args) -> None:
    import time

    from dreamloom.registry import list_versions

    rows = list_versions(args.name)
    if not rows:
        print("no registered models")
        return
    print(f"{'name':<20} {'ver':>4} {'method':<18} {'clip_t':>7} {'clip_i':>7} {'dino':>7} {'aliases':<22} age")
    for row in rows:
        metrics = row["metrics"]
        values = " ".join(f"{metrics[m]:7.3f}" if m in metrics else f"{'-':>7}" for m in ("clip_t", "clip_i", "dino"))
        age = _age(time.time() - row["created"] / 1000)
        aliases = ",".join(row["aliases"]) or "-"
        print(f"{row['name']:<20} {row['version']:>4} {row['method']:<18} {values} {aliases:<22} {age}")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _promote(args) -> int:
    from dreamloom.registry import GateConfig, promote

    result = promote(args.name, args.version, GateConfig.load(args.gate), args.force, args.reason)
    for check in result.checks:
        print(f"  [{'pass' if check.passed else 'FAIL'}] {check.message}")
    label = f"{args.name} v{result.version}"
    if not result.moved and result.previous_champion == result.version:
        print(f"{label} is already the champion")
    elif result.moved:
        forced = " (forced past the gate)" if result.forced else ""
        print(f"{label} is now champion{forced}; previous champion: {result.previous_champion or 'none'}")
    else:
        print(f"{label} is challenger; the gate refused it and the champion stays v{result.previous_champion}")
        return 1
    return 0


def _rollback(args) -> None:
    from dreamloom.registry import rollback

    before, after = rollback(args.name)
    print(f"{args.name}: champion moved back from v{before} to v{after}")


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
