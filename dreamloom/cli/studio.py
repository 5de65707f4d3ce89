"""``dreamloom studio``: the browser UI (Teach, Models, Generate)."""

from __future__ import annotations

import os
from pathlib import Path

from dreamloom.errors import DreamloomError

AUTH_ENV = "DREAMLOOM_STUDIO_AUTH"


def _add_studio(commands) -> None:
    command = commands.add_parser(
        "studio",
        help="the browser UI: teach a concept, compare and promote versions, generate with them",
        description=f"Loopback only by default. Off loopback it needs users (--auth-file or {AUTH_ENV}=user:password).",
    )
    command.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    command.add_argument("--port", type=int, default=7860)
    command.add_argument("--root-path", help="the path it is served under behind an ingress, e.g. /studio")
    command.add_argument("--auth-file", type=Path, help="user:password lines")
    command.add_argument(
        "--no-auth", action="store_true", help="listen off loopback without users (a proxy authenticates)"
    )
    command.add_argument("--triton-url", default="", help="the serving endpoint (Triton HTTP), e.g. localhost:8000")
    command.add_argument("--serving-store", type=Path, help="the store that Triton reads (deploys need it)")
    command.add_argument("--model-name", default="dreamloom", help="the Triton model serving the base")
    command.add_argument(
        "--serve-local", action="store_true", help="start a local Triton serving --base-model and use it"
    )
    command.add_argument("--base-model", default="toy", help="the Teach form's default base (and --serve-local's)")
    command.add_argument("--resolution", type=int, default=64, help="the Teach form's default resolution")
    command.set_defaults(handler=_studio)


def _users(args) -> list[tuple[str, str]]:
    from dreamloom.studio.app import read_users

    users = []
    if args.auth_file:
        if not args.auth_file.is_file():
            raise DreamloomError(f"--auth-file {args.auth_file} does not exist")
        users += read_users(args.auth_file.read_text(), str(args.auth_file))
    if os.environ.get(AUTH_ENV):
        users += read_users(os.environ[AUTH_ENV], AUTH_ENV)
    return users


def _studio(args) -> int:
    import signal

    # SIGTERM (Kubernetes, systemd, timeout) stops it as Ctrl-C does: the page closes and a
    # --serve-local Triton is stopped with it instead of being left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from dreamloom.logs import quiet_library_logging
    from dreamloom.settings import work_dir
    from dreamloom.studio.app import Studio, StudioSettings, check_exposure

    users = _users(args)
    check_exposure(args.host, users, args.no_auth)
    quiet_library_logging()
    settings = StudioSettings(
        work=work_dir() / "studio",
        triton_url=args.triton_url,
        serving_store=args.serving_store,
        model=args.model_name,
        base_model=args.base_model,
        resolution=args.resolution,
    )
    try:
        if not args.serve_local:
            return _serve(Studio(settings), args, users)
        from dreamloom.serving.repository import ServingStore
        from dreamloom.serving.server import TritonServer, free_port

        store = ServingStore(args.serving_store or work_dir() / "studio-serving")
        store.ensure_model(args.model_name, args.base_model)
        server = TritonServer.for_store(store, [args.model_name], free_port(), free_port(), free_port())
        with server.start(progress=True):
            settings.triton_url, settings.serving_store = server.http_url, store.root
            return _serve(Studio(settings), args, users)
    except KeyboardInterrupt:  # asked to stop: a clean exit, the local Triton already stopped
        print("[studio] stopped", flush=True)
        return 0


def _serve(studio, args, users) -> int:
    from dreamloom.studio.app import launch

    where = f"http://{args.host}:{args.port}{args.root_path or ''}"
    print(f"[studio] serving on {where} (Triton: {studio.settings.triton_url or 'none'}); Ctrl-C stops", flush=True)
    launch(studio, args.host, args.port, users, args.root_path)
    return 0


def add_commands(commands) -> None:
    _add_studio(commands)
