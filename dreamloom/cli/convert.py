"""Format conversions: kohya/A1111 adapter files (LoRA, DoRA, LoHa, LoKr), A1111 hypernetworks and
embeddings."""

from __future__ import annotations

from pathlib import Path


def _add_lora(commands) -> None:
    lora = commands.add_parser("lora", help="LoRA-family format conversions (kohya / A1111 / ComfyUI)")
    actions = lora.add_subparsers(title="actions", metavar="ACTION")
    export = actions.add_parser(
        "export-kohya", help="write a LoRA, DoRA, LoHa or LoKr artifact as a kohya/A1111 safetensors file"
    )
    export.add_argument("artifact", type=Path)
    export.add_argument("--out", type=Path, required=True, help="target .safetensors file")
    export.set_defaults(handler=_export_kohya)
    imported = actions.add_parser(
        "import-kohya", help="make a dreamloom artifact from a kohya-format LoRA, DoRA, LoHa or LoKr file"
    )
    imported.add_argument("file", type=Path)
    imported.add_argument("--base-model", required=True)
    imported.add_argument("--output", type=Path, required=True)
    imported.add_argument("--trigger-token")
    imported.set_defaults(handler=_import_kohya)


def _export_kohya(args) -> None:
    from dreamloom.interop import export_kohya

    print(f"wrote {export_kohya(args.artifact, args.out)}")


def _import_kohya(args) -> None:
    from dreamloom.interop import import_kohya
    from dreamloom.logs import quiet_library_logging

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
    from dreamloom.interop import import_a1111_hypernetwork

    import_a1111_hypernetwork(args.file, args.base_model, args.output)
    print(f"imported {args.file} as {args.output}")


def _add_textual_inversion(commands) -> None:
    embedding = commands.add_parser("textual-inversion", help="textual-inversion embedding conversions")
    actions = embedding.add_subparsers(title="actions", metavar="ACTION")
    export = actions.add_parser(
        "export-a1111", help="write the embedding as A1111 reads it: NAME.safetensors, NAME being the prompt word"
    )
    export.add_argument("artifact", type=Path, help="a textual-inversion or pivotal artifact")
    export.add_argument("--out", type=Path, required=True, help="a folder (A1111's embeddings/)")
    export.set_defaults(handler=_export_a1111)


def _export_a1111(args) -> None:
    from dreamloom.interop import export_a1111_embedding

    target = export_a1111_embedding(args.artifact, args.out)
    print(f"wrote {target}; in A1111 prompts write {target.stem}")


def add_commands(commands) -> None:
    _add_lora(commands)
    _add_hypernetwork(commands)
    _add_textual_inversion(commands)
