"""``dreamloom serve``, ``dreamloom deploy`` and ``dreamloom generate`` (the endpoint's client)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from dreamloom.cli.options import add_sampler_argument
from dreamloom.errors import DreamloomError
from dreamloom.serving.repository import add_acceleration_arguments


def add_commands(commands) -> None:
    _add_serve(commands)
    _add_deploy(commands)
    _add_generate(commands)
    _add_loadtest(commands)
    _add_check(commands)


def _add_check(commands) -> None:
    command = commands.add_parser(
        "check", help="is the deployment answering? MLflow reachable, the Triton model ready, one image rendered"
    )
    command.add_argument("--triton-url", required=True, help="Triton's HTTP address, e.g. dreamloom-triton:8000")
    command.add_argument("--model-name", default="dreamloom")
    command.add_argument("--tracking-uri", help="MLflow (default: MLFLOW_TRACKING_URI, else the local store)")
    command.set_defaults(handler=_check)


def _check(args) -> None:
    from dreamloom.serving.smoke import check_deployment

    for line in check_deployment(args.triton_url, args.model_name, args.tracking_uri):
        print(f"[check] ok: {line}", flush=True)


def _add_serve(commands) -> None:
    command = commands.add_parser("serve", help="start a local Triton serving a base model and its adapters")
    command.add_argument(
        "--base-model", default="toy", help="the shared base, SD 1.x/2.x or SDXL (hub id, folder, toy, tiny-sdxl, ...)"
    )
    command.add_argument("--store", type=Path, help="serving store (default: $DREAMLOOM_HOME/serving)")
    command.add_argument("--model-name", default="dreamloom", help="the Triton model name")
    command.add_argument("--http-port", type=int, default=8000)
    command.add_argument("--grpc-port", type=int, default=8001)
    command.add_argument("--metrics-port", type=int, default=8002)
    command.add_argument("--max-batch-size", type=int, default=8)
    command.add_argument("--adapter-budget-mib", type=int, default=512, help="memory for cached adapters")
    command.add_argument(
        "--max-request-cost", type=float, help="megapixel-steps one request may cost (default: 4 on CPU, 60 on GPU)"
    )
    command.add_argument("--queue-timeout-s", type=float, default=60.0, help="reject requests waiting longer")
    add_acceleration_arguments(command)
    command.set_defaults(handler=_serve)


def _serve(args) -> int:
    from dreamloom.serving.repository import ServingStore
    from dreamloom.serving.server import TritonServer

    store = ServingStore(args.store)
    config = {
        "max_batch_size": args.max_batch_size,
        "adapter_budget_mib": args.adapter_budget_mib,
        "max_request_cost": args.max_request_cost,
        "queue_timeout_s": args.queue_timeout_s,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
    }
    store.ensure_model(args.model_name, args.base_model, **config)
    store.write_config(args.model_name, replace=True, **config)  # Triton is not running yet: this start's settings
    served = store.latest_routes(args.model_name).base_model
    if served != args.base_model:
        raise DreamloomError(
            f"Triton model {args.model_name!r} in {store.root} serves {served}; "
            f"use another --model-name or --store for {args.base_model}"
        )
    others = [p.name for p in store.models.iterdir() if p.name != args.model_name and store.versions(p.name)]
    server = TritonServer.for_store(
        store, [args.model_name, *others], args.http_port, args.grpc_port, args.metrics_port
    )
    server.start(progress=True)
    print(
        f"\n[dreamloom] Triton is ready, serving {', '.join(server.models)} (base {args.base_model})\n"
        f"  HTTP     {server.http_url}\n  gRPC     {server.grpc_url}\n  metrics  {server.metrics_url}\n"
        f"  store    {store.root}\n  log      {server.log_file}\n"
        f"  try:     dreamloom generate --url {server.http_url} --prompt '...' --out images/\n"
        "Ctrl-C stops it.",
        flush=True,
    )
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping and server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("[dreamloom] stopping Triton (in-flight requests finish first)", flush=True)
        server.stop()
    return 0 if stopping or server.process.returncode in (0, -signal.SIGTERM) else 1


def _add_deploy(commands) -> None:
    command = commands.add_parser("deploy", help="serve a registered model version (NAME@ALIAS or NAME --version V)")
    command.add_argument("reference", help="e.g. shoe@champion, shoe/3, or shoe with --version")
    command.add_argument("--version")
    command.add_argument("--url", default="localhost:8000", help="Triton HTTP address")
    command.add_argument("--store", type=Path, help="the store the server was started with")
    command.add_argument("--model-name", default="dreamloom", help="the Triton model serving the base")
    command.set_defaults(handler=_deploy)


def _deploy(args) -> None:
    from dreamloom.serving.deploy import deploy
    from dreamloom.serving.repository import ServingStore

    result = deploy(args.reference, args.url, args.version, ServingStore(args.store), args.model_name, progress=True)
    target = f"ADAPTER {result.adapter!r} on model {result.triton_model}" if result.adapter else "its own model"
    print(
        f"deployed {result.name} version {result.version} as {target} "
        f"(Triton version {result.triton_version}; ready in {result.seconds_to_ready:.1f} s, "
        f"first image after {result.seconds_to_first_image:.1f} s)"
    )


def _add_generate(commands) -> None:
    from dreamloom.serving.protocol import MODES

    command = commands.add_parser("generate", help="images from the serving endpoint (Triton)")
    command.add_argument("--url", required=True, help="Triton address, e.g. localhost:8000 (HTTP) or :8001 (gRPC)")
    command.add_argument("--protocol", choices=["http", "grpc"], default="http")
    command.add_argument("--model-name", default="dreamloom")
    command.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    command.add_argument("--negative-prompt", default="")
    command.add_argument("--adapter", default="", help="NAME@ALIAS or NAME/VERSION of a deployed adapter")
    command.add_argument("--scale", type=float, default=1.0, help="adapter scale")
    command.add_argument("--mode", choices=MODES, default="txt2img")
    command.add_argument("--num-images", type=int, default=1, help="images per prompt (seeds seed, seed+1, ...)")
    command.add_argument("--steps", type=int, default=25)
    command.add_argument("--guidance", type=float, default=7.5)
    add_sampler_argument(command)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--size", help="WxH (default: the base model's size)")
    command.add_argument("--strength", type=float, default=0.75, help="img2img/inpaint: how much to change")
    command.add_argument("--init-image", type=Path, help="img2img/inpaint: the picture to start from")
    command.add_argument("--mask", type=Path, help="inpaint: white where to repaint")
    command.add_argument("--control-image", type=Path, help="controlnet: the condition to follow")
    command.add_argument("--control-scale", type=float, default=1.0)
    command.add_argument("--concurrency", type=int, default=4)
    command.add_argument("--out", type=Path, required=True)
    command.set_defaults(handler=_generate)


def _generate(args) -> None:
    from PIL import Image

    from dreamloom.cli.generate import _parse_size
    from dreamloom.serving.client import ServingClient
    from dreamloom.serving.protocol import ImageRequest

    width, height = _parse_size(args.size)
    images = {name: _read(path) for name, path in _image_args(args).items()}
    requests = [
        ImageRequest(
            prompt=prompt,
            negative_prompt=args.negative_prompt,
            mode=args.mode,
            adapter=args.adapter,
            adapter_scale=args.scale,
            steps=args.steps,
            guidance=args.guidance,
            sampler=args.sampler,
            width=width or 0,
            height=height or 0,
            seed=args.seed + index,
            strength=args.strength,
            control_scale=args.control_scale,
            **images,
        )
        for prompt in args.prompt
        for index in range(args.num_images)
    ]
    for request in requests:
        request.check()  # every refusal before the first request goes out
    with ServingClient(args.url, args.protocol, args.model_name) as client:
        results = client.generate_many(requests, args.concurrency, progress=len(requests) > 1 or sys.stderr.isatty())
    args.out.mkdir(parents=True, exist_ok=True)
    for number, (request, image) in enumerate(zip(requests, results, strict=True)):
        Image.fromarray(image).save(args.out / f"{number:03d}_seed{request.seed}.png")
    print(f"{len(results)} images in {args.out}")


def _image_args(args) -> dict[str, Path]:
    named = {"init_image": args.init_image, "mask": args.mask, "control_image": args.control_image}
    return {name: path for name, path in named.items() if path is not None}


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise DreamloomError(f"{path} does not exist")
    return path.read_bytes()


def _add_loadtest(commands) -> None:
    from dreamloom.serving.loadtest import LOAD_MODES

    command = commands.add_parser(
        "loadtest", help="drive the serving endpoint with a mix of requests; images/s, p50/p95/p99, failures"
    )
    command.add_argument("--url", required=True, help="Triton address, e.g. localhost:8000 (HTTP) or :8001 (gRPC)")
    command.add_argument("--protocol", choices=["http", "grpc"], default="http")
    command.add_argument("--model-name", default="dreamloom")
    command.add_argument("--requests", type=int, default=32, help="measured requests")
    command.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    command.add_argument("--warmup", type=int, help="unmeasured requests first (default: one per adapter)")
    command.add_argument("--adapter", action="append", default=[], help="NAME@ALIAS, round-robin (repeatable)")
    command.add_argument("--adapter-template", help="adapters by number, e.g. 'brand-{}@champion'")
    command.add_argument("--adapter-count", type=int, default=0, help="how many of --adapter-template (1..N)")
    command.add_argument("--mode", action="append", choices=LOAD_MODES, help="modes, round-robin (repeatable)")
    command.add_argument("--prompt", default="a photo of a product on a plain background")
    command.add_argument("--steps", type=int, default=20)
    command.add_argument("--size", type=int, default=0, help="width and height (default: the model's)")
    command.add_argument("--guidance", type=float, default=7.5)
    add_sampler_argument(command)
    command.add_argument("--out", type=Path, help="also write the report as JSON")
    command.set_defaults(handler=_loadtest)


def _loadtest(args) -> int:
    """Exit 0 when every request succeeded, 1 when any failed (the report says which and why)."""
    import json

    from dreamloom.serving.client import ServingClient
    from dreamloom.serving.loadtest import LoadPlan, run_load

    adapters = list(args.adapter)
    if args.adapter_template:
        if "{}" not in args.adapter_template or args.adapter_count < 1:
            raise DreamloomError("--adapter-template needs a {} for the number and --adapter-count N (1 or more)")
        adapters += [args.adapter_template.format(number) for number in range(1, args.adapter_count + 1)]
    plan = LoadPlan(
        requests=args.requests,
        concurrency=args.concurrency,
        adapters=tuple(adapters or [""]),
        modes=tuple(args.mode or ["txt2img"]),
        prompt=args.prompt,
        steps=args.steps,
        size=args.size,
        sampler=args.sampler,
        guidance=args.guidance,
        warmup=len(adapters or [""]) if args.warmup is None else args.warmup,
    )
    with ServingClient(args.url, args.protocol, args.model_name) as client:
        report = run_load(client, plan, progress=sys.stderr.isatty())
    document = json.dumps(report.as_dict(), indent=2)
    print(document)
    if args.out:
        args.out.write_text(document + "\n")
    print(f"[dreamloom] {report.summary()}", file=sys.stderr)
    return 1 if report.failures else 0
