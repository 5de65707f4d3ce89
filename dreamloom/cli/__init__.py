"""The ``dreamloom`` command line: a thin layer over the library.

Each subcommand lives in a module here; it parses its flags, calls the library and prints where to
look. Problems the user can fix (``DreamloomError``) are printed as one clear message; the exit
code says which kind (``dreamloom.errors``: 1 refused by a gate or a check, 2 usage, 3 input, 4 a
service unreachable).
"""

from __future__ import annotations

import argparse
import sys

from dreamloom import __version__
from dreamloom.cli import advise, convert, generate, pipeline, registry, serving, studio, train, usecases
from dreamloom.errors import EXIT_OK, EXIT_USAGE, as_user_error


def main(argv: list[str] | None = None) -> int:
    from dreamloom.settings import apply_quiet_defaults

    apply_quiet_defaults()  # before the libraries are imported: some read these once, at import
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code = args.handler(args)
    except KeyboardInterrupt:
        print("dreamloom: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        known = as_user_error(exc)
        if known is None:
            raise
        print(f"dreamloom: error: {known}", file=sys.stderr)
        return known.exit_code
    return code or EXIT_OK


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
    studio.add_commands(commands)
    return parser
