"""``dreamloom generate-local``: images from an artifact, in this process."""

from __future__ import annotations

import sys
from pathlib import Path

from dreamloom.cli.options import add_sampler_argument
from dreamloom.errors import DreamloomError


def _add_generate_local(commands) -> None:
    command = commands.add_parser("generate-local", help="render images from an artifact in this process")
    command.add_argument("--artifact", type=Path, required=True, help="artifact folder (with dreamloom.json)")
    command.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    command.add_argument("--negative-prompt")
    command.add_argument("--num-images", type=int, default=4, help="images per prompt")
    command.add_argument("--steps", type=int, default=25)
    command.add_argument("--guidance", type=float, default=7.5)
    add_sampler_argument(command)
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
    from dreamloom.generation import GenerationRequest, generate
    from dreamloom.inference import load_artifact_pipeline, save_images
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
        sampler=args.sampler,
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
    from dreamloom.data.images import ImageProblem, open_rgb

    try:
        image = open_rgb(args.control_image, 50_000_000)
    except ImageProblem as exc:
        raise DreamloomError(f"--control-image {args.control_image}: {exc}") from None
    method = manifest.method_type
    if args.control_from_photo:
        image = method.condition_from_photo(manifest.config, image)
    scale = args.control_scale if args.control_scale is not None else method.default_control_scale(manifest.config)
    return {"control_image": image, "control_scale": scale}


def _parse_size(text: str | None) -> tuple[int | None, int | None]:
    from dreamloom.usecases.jobs import parse_size

    width, height = parse_size(text)
    return width or None, height or None


def add_commands(commands) -> None:
    _add_generate_local(commands)
