"""``dreamloom advise``: which method to use, sized for a base model."""

from __future__ import annotations

import argparse
import sys

from dreamloom.errors import DreamloomError


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

    from dreamloom.advisor import QUESTIONS, Needs, recommend
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
        rows = {
            m: {
                "trainable_params": e.trainable_params,
                "artifact_bytes": e.artifact_bytes,
                "training_state_bytes": e.training_state_bytes,
            }
            for m, e in advice.estimates.items()
        }
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
        print(
            f"{method:<18} {row.trainable_params:>14,} {human_bytes(row.artifact_bytes):>10} "
            f"{human_bytes(row.training_state_bytes):>16}{marker}"
        )
    print(
        "* weights (frozen in bf16), gradients and AdamW state; activations come on top "
        "(reduce them with gradient checkpointing and a smaller batch)"
    )


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


def add_commands(commands) -> None:
    _add_advise(commands)
