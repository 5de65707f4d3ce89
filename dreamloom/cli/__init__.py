"""The ``dreamloom`` command line: a thin layer over the library.

Each subcommand lives in a module here; it parses its flags, calls the library and prints where to
look. Problems the user can fix (``DreamloomError``) are printed as one clear message, exit 2.
"""

from __future__ import annotations

import argparse
import sys

from dreamloom import __version__
from dreamloom.cli import advise, convert, generate, pipeline, registry, serving, train, usecases
from dreamloom.errors import DreamloomError, credentials_refused


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
    except Exception as exc:
        refused = credentials_refused(exc)
        if refused is None:
            raise
        print(f"dreamloom: error: {refused}", file=sys.stderr)
        return 2
    return code or 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamloom", description="Teach Stable Diffusion new concepts; serve them.")
    parser.add_argument("--version", action="version", version=f"dreamloom {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    train.add_commands(commands)
    generate.add_commands(commands)
    convert.add_commands(commands)
    registry.add_commands(commands)
    advise.add_commands(commands)
    serving.add_commands(commands)
    pipeline.add_commands(commands)
    usecases.add_commands(commands)
    return parser
