"""``dreamloom pipeline``: compile, run locally, submit to Kubeflow Pipelines."""

from __future__ import annotations

from pathlib import Path


def add_commands(commands) -> None:
    command = commands.add_parser("pipeline", help="the personalize pipeline (Kubeflow Pipelines)")
    actions = command.add_subparsers(title="actions", metavar="ACTION")
    compile_ = actions.add_parser("compile", help="write the pipelines' YAML to upload to the KFP UI")
    compile_.add_argument("--out", type=Path, help="a folder; default: beside each pipeline in pipelines/")
    compile_.add_argument(
        "--image-digest", help="pin the components' image by digest (sha256:..., from the push) instead of its tag"
    )
    _add_release_arguments(compile_)
    compile_.set_defaults(handler=_compile)
    upload = actions.add_parser("upload", help="upload the compiled pipeline to a KFP backend (new version)")
    upload.add_argument("--host", required=True, help="KFP API address, e.g. http://ml-pipeline.kubeflow:8888")
    upload.add_argument("--version-name", required=True, help="name of the pipeline version, e.g. 0.1.0")
    _add_release_arguments(upload)
    upload.set_defaults(handler=_upload)
    for name, helps in (("run", "run it on this machine (KFP local runner)"), ("submit", "run it on a KFP backend")):
        action = actions.add_parser(name, help=helps)
        action.add_argument("config", type=Path, help="run config YAML (without output)")
        action.add_argument("--model-name", required=True, help="the registered model the version goes to")
        action.add_argument("--gate", type=Path, help="gate config YAML (metrics, thresholds, tolerance)")
        action.add_argument("--triton-url", help="deploy to this Triton after promotion")
        action.add_argument("--serving-store", help="the serving store the Triton server reads")
        action.add_argument("--eval-steps", type=int)
        action.add_argument("--eval-images-per-prompt", type=int)
        action.add_argument("--launcher", choices=("local", "ray", "kuberay"), help="where training runs")
        action.add_argument("--ray-address", help="ray launcher: the cluster's dashboard, http://HOST:8265")
        action.add_argument(
            "--train-gpus", type=int, help="GPUs of the train step's pod (default 1; 0 for ray/kuberay)"
        )
        if name == "run":
            action.add_argument("--local", action="store_true", required=True, help="run with KFP's local runner")
            action.add_argument(
                "--verbose", action="store_true", help="show KFP's own output (each step's executor input and outputs)"
            )
            action.set_defaults(handler=_run)
        else:
            action.add_argument("--host", required=True, help="KFP API address, e.g. http://localhost:8080")
            action.add_argument("--experiment", default="dreamloom")
            action.add_argument("--version-name", help="also upload the compiled YAML as this pipeline version")
            action.add_argument(
                "--service-account",
                help="the run's Kubernetes service account (default: the release's <fullname>-pipeline, which may "
                "create RayJobs); '' for KFP's default",
            )
            _add_release_arguments(action)
            action.set_defaults(handler=_submit)


def _add_release_arguments(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--release",
        help="the chart's Helm release the steps use (its claims, RayJob settings and accounts; default dreamloom)",
    )
    group.add_argument("--fullname", help="the release's full name, where it sets fullnameOverride")


def _release(args):
    from dreamloom.k8s.names import DEFAULT_RELEASE, ReleaseNames

    if args.fullname:
        return ReleaseNames(args.fullname)
    return ReleaseNames.of_release(args.release) if args.release else DEFAULT_RELEASE


def _compile(args) -> None:
    import os

    if args.image_digest:  # read when the components are defined, at import
        os.environ["DREAMLOOM_IMAGE_DIGEST"] = args.image_digest
    from dreamloom.errors import DreamloomError
    from dreamloom.k8s.names import DEFAULT_RELEASE
    from dreamloom.settings import container_image
    from pipelines import compile_all

    image, release = container_image(), _release(args)
    if release != DEFAULT_RELEASE and args.out is None:
        raise DreamloomError(
            f"the YAML beside each pipeline is the release dreamloom's; pass --out FOLDER for {release.fullname}'s"
        )
    for path in compile_all(args.out, release):
        print(f"compiled {path} (components run {image}; volumes of release {release.fullname})")


def _upload(args) -> None:
    from pipelines.runner import upload

    release = _release(args)
    uploaded = upload(args.host, args.version_name, release=release)
    print(f"uploaded {uploaded} to {args.host} as {release.pipeline('personalize')}")


def _arguments(args) -> dict:
    import yaml

    from pipelines.runner import pipeline_arguments

    gate = yaml.safe_load(args.gate.read_text()) if args.gate else None
    return pipeline_arguments(
        args.config,
        args.model_name,
        gate_config=gate,
        triton_url=args.triton_url,
        serving_store=args.serving_store,
        eval_steps=args.eval_steps,
        eval_images_per_prompt=args.eval_images_per_prompt,
        launcher=args.launcher,
        ray_address=args.ray_address,
        train_gpus=args.train_gpus,
    )


def _run(args) -> None:
    from pipelines.runner import LOCAL_RUN_LOG, run_local

    root = run_local(_arguments(args), verbose=args.verbose)
    print(f"pipeline finished: {_registered(args.model_name)}\n  outputs  {root}")
    if not args.verbose:
        print(f"  log      {root / LOCAL_RUN_LOG}")


def _registered(name: str) -> str:
    """What the run left in the registry: the newest version of ``name`` and its aliases."""
    from dreamloom.errors import DreamloomError
    from dreamloom.registry import list_versions

    try:
        newest = max(list_versions(name), key=lambda row: row.version)
    except (DreamloomError, ValueError):
        return f"nothing registered as {name}"
    aliases = ", ".join(newest.aliases) or "no alias"
    return f"registered {name} v{newest.version} ({aliases}); see `dreamloom registry list {name}`"


def _submit(args) -> None:
    from pipelines.runner import submit

    arguments = _arguments(args)
    run_id = submit(
        args.host,
        arguments,
        args.experiment,
        version_name=args.version_name,
        service_account=args.service_account,
        release=_release(args),
    )
    print(f"submitted run {run_id} to {args.host} (experiment {args.experiment})")
