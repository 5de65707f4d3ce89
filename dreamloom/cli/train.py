"""``dreamloom train`` and ``dreamloom prepare``."""

from __future__ import annotations

from pathlib import Path


def _add_train(commands) -> None:
    from dreamloom.methods import METHODS

    command = commands.add_parser(
        "train",
        help="train an adapter or model on a folder of images",
        description="Train with one of the methods. Flags override the --config file; --set reaches any field.",
    )
    command.add_argument("--config", type=Path, help="run config YAML")
    command.add_argument("--method", help=" | ".join(METHODS))
    command.add_argument(
        "--base-model", help="hub id, local diffusers folder, tiny, tiny-sdxl, sd15-random, sd21-random or sdxl-random"
    )
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
    for flag, (spec, users) in _method_flags(METHODS).items():
        command.add_argument(f"--{flag.replace('_', '-')}", type=spec.type, help=f"{'/'.join(users)}: {spec.help}")
    command.add_argument("--run-name", help="names the run for resuming (default: the output folder's name)")
    command.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    command.add_argument(
        "--launcher",
        choices=("local", "ray", "kuberay"),
        default="local",
        help="local: Ray on this machine (or joins RAY_ADDRESS); ray: a job through the Ray Jobs API at "
        "RAY_ADDRESS (http://HOST:8265); kuberay: a RayJob in the current Kubernetes namespace",
    )
    command.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. lora.rank=8"
    )
    command.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    command.set_defaults(handler=_train)


def _method_flags(methods) -> dict:
    """Each method's flag once, with the methods that read it."""
    flags: dict = {}
    for name, method in methods.items():
        for flag, spec in method.flags.items():
            flags.setdefault(flag, (spec, []))[1].append(name)
    return flags


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
    from dreamloom.settings import redacted, tracking_uri
    from dreamloom.training.launcher import launch

    quiet_library_logging()
    result = launch(config, args.launcher, resume=args.resume)
    if result.resumed_from_step:
        print(f"\nresumed from step {result.resumed_from_step}; finished at step {result.steps}")
    print(f"\nartifact:      {result.artifact}")
    grid = result.artifact / "samples" / "final.png"
    print(f"sample grid:   {grid if grid.is_file() else 'none (validation.final_grid is off)'}")
    print(f"MLflow run:    {result.mlflow_run_id} ({redacted(tracking_uri())})")
    if tracking_uri().startswith("sqlite:"):
        print(f"open the UI:   mlflow ui --backend-store-uri {tracking_uri()}")


def _add_prepare(commands) -> None:
    command = commands.add_parser("prepare", help="validate and prepare a folder of training images")
    command.add_argument("--data", type=Path, required=True, help="folder of instance images")
    command.add_argument("--out", type=Path, required=True, help="folder for the prepared set")
    command.add_argument("--resolution", type=int, default=512)
    command.add_argument("--bucketing", action="store_true", help="aspect-ratio buckets instead of center crops")
    command.add_argument("--max-image-pixels", type=int, default=50_000_000)
    command.add_argument(
        "--no-upscale", action="store_true", help="refuse images smaller than the resolution instead of upscaling them"
    )
    command.set_defaults(handler=_prepare)


def _prepare(args) -> None:
    from dreamloom.data import PrepareOptions, prepare_dataset

    options = PrepareOptions(
        resolution=args.resolution,
        bucketing=args.bucketing,
        max_image_pixels=args.max_image_pixels,
        upscale=not args.no_upscale,
    )
    dataset = prepare_dataset(args.data, args.out, options)
    print(f"prepared {len(dataset.items)} images into {dataset.root} ({dataset.dataset_hash})")


def add_commands(commands) -> None:
    _add_train(commands)
    _add_prepare(commands)
