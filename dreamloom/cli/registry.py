"""``dreamloom evaluate`` and ``dreamloom registry``."""

from __future__ import annotations

from pathlib import Path

from dreamloom.errors import DreamloomError


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
    from dreamloom.registry.store import check_registrable, client, evaluation_of_run

    check_registrable(args.artifact, args.name, client())  # refuse before spending time on evaluation
    evaluation = None
    if args.eval_run:
        evaluation = evaluation_of_run(args.eval_run)
    elif args.evaluate:
        print(
            f"[register] 1/2 evaluating {args.artifact}: every prompt rendered and scored "
            "(--no-evaluate skips this, --eval-run RUN reuses one)",
            flush=True,
        )
        _, evaluation = _run_evaluation(
            args.artifact, args, {"evaluated": Path(args.artifact).name, "artifact": str(args.artifact)}
        )
    print(
        f"[register] {'2/2 ' if evaluation and not args.eval_run else ''}registering {args.name} in MLflow", flush=True
    )
    version = register(args.artifact, args.name, evaluation)
    print(f"registered {args.name} version {version.version}")


def _list(args) -> None:
    import time

    from dreamloom.registry import list_versions

    rows = list_versions(args.name)
    if not rows:
        print("no registered models")
        return
    print(f"{'name':<20} {'ver':>4} {'method':<18} {'clip_t':>7} {'clip_i':>7} {'dino':>7} {'aliases':<22} age")
    for row in rows:
        metrics = row.metrics
        values = " ".join(f"{metrics[m]:7.3f}" if m in metrics else f"{'-':>7}" for m in ("clip_t", "clip_i", "dino"))
        age = _age(time.time() - row.created / 1000)
        aliases = ",".join(row.aliases) or "-"
        print(f"{row.name:<20} {row.version:>4} {row.method:<18} {values} {aliases:<22} {age}")


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


def add_commands(commands) -> None:
    _add_evaluate(commands)
    _add_registry(commands)
