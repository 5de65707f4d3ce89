"""The methods compared over a family of new concepts, settings chosen on some and reported on others.

One concept proves little: settings picked on it fit it. Here a family of new concepts
(``dreamloom.toy.concepts.family``: each with a shape or texture the toy base never saw) is split
once, by seed, into tuning and evaluation concepts.

1. Sweep (tuning concepts only): per method, learning rates at half, once and twice the default
   (followed past the grid's edge while the edge is best); then, on top of the best, twice the
   steps (four times while the longer run is best) and twice the capacity (rank or vectors);
   then a lighter prior or pictures of the class, and the text encoder, where they apply
   (``dreamloom.toy.study.sweep_stages``). A setting is chosen by its mean normalized
   read-back lift among those keeping prompt fidelity >= 0.9 (``dreamloom.toy.study.choose``).
   Every candidate's scores are recorded.
2. Report (evaluation concepts only, never used to choose): each method with its chosen settings,
   per concept and seed: the subject embedding's cosine, the classifiers' read-back of the concept
   (shape, colour, texture, all three) and of the prompt (background, position, count), and the
   normalized lifts (score - base) / (ceiling - base), capped at 1; per method the mean and spread over
   concepts and seeds, and a picture grid per method and concept.

Prints JSON and a markdown table; ``--out DIR`` writes family.json, family.md and the grids.
``--settings FILE`` (a family.json) skips the sweep and reports with the settings it chose;
``--reuse FILE...`` takes the runs those reports recorded (same setup) instead of training them
again, so a sweep given a new stage trains only what is new; it also takes the runs.jsonl a study
writes to ``--out`` as each run ends, to resume one that stopped; ``--merge FILE...`` joins the
family.json files of one setup (methods run apart, e.g. on several machines) into one report.

    .venv/bin/python bench/family.py --out bench/results/family    # 232 runs: 5 to 6 hours on 2 cores
    .venv/bin/python bench/family.py --methods pivotal --out DIR      # one method: 30 to 60 minutes
    .venv/bin/python bench/family.py --methods lora --family-size 4 --tuning 1 --steps 100
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import bench_process, emit_with_table  # bench/report.py: these scripts run with bench/ on sys.path

from dreamloom.toy.study import SUBJECT_METHODS


def main() -> None:
    args = _parse()
    bench_process(args.threads)
    if args.merge:
        report = merged([json.loads(path.read_text()) for path in args.merge])
    else:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            report = Study(args, Path(scratch)).run()
        report["seconds"] = round(time.perf_counter() - started)
    emit_with_table(report, markdown(report), args.out, "family")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=list(SUBJECT_METHODS), choices=SUBJECT_METHODS)
    parser.add_argument("--family-size", type=int, default=12)
    parser.add_argument("--tuning", type=int, default=4, help="concepts the settings are chosen on")
    parser.add_argument("--family-seed", type=int, default=0, help="draws the concepts and their split")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per evaluation concept")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--settings", type=Path, help="a family.json whose chosen settings to report with (no sweep)")
    parser.add_argument("--reuse", type=Path, nargs="+", default=[], help="family.json files whose runs to reuse")
    parser.add_argument("--merge", type=Path, nargs="+", help="family.json files of one setup to join (no runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="folder for family.json, family.md and the picture grids")
    return parser.parse_args()


class Study:
    def __init__(self, args, scratch: Path):
        from dreamloom.toy.concepts import family, split_family

        self.args, self.scratch = args, scratch
        self.tuning, self.evaluation = split_family(
            family(args.family_size, args.family_seed), args.tuning, args.family_seed
        )
        self._bases: dict[str, object] = {}
        self._recorded = recorded_runs(args.reuse, self.setup())
        self._runs = itertools.count(1)
        self._planned = self._planned_runs()

    def _planned_runs(self) -> int:
        from dreamloom.toy.study import MAX_STEPS_FACTOR, RATES_PAST_EDGE, sweep_stages

        sweeps = 0 if self.args.settings else len(self.tuning)
        # at most: tried only while the edge is best (steps: 2x is a stage's own candidate, then doublings)
        past_edges = RATES_PAST_EDGE + MAX_STEPS_FACTOR.bit_length() - 2
        stages = [sweep_stages(method, self.args.steps) for method in self.args.methods]
        per_method = [(sum(map(len, method_stages)) + past_edges) * sweeps for method_stages in stages]
        return sum(per_method) + len(self.args.methods) * len(self.evaluation) * self.args.seeds

    def setup(self) -> dict:
        return {
            "base_model": "toy",
            "family_seed": self.args.family_seed,
            "tuning_concepts": [c.name for c in self.tuning],
            "evaluation_concepts": [c.name for c in self.evaluation],
            "steps": self.args.steps,
            "batch_size": self.args.batch_size,
            "images_per_prompt": self.args.images_per_prompt,
            "seeds": self.args.seeds,
        }

    def run(self) -> dict:
        report = {
            "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": self.args.threads},
            "setup": self.setup(),
        }
        if self.args.settings:
            chosen = json.loads(self.args.settings.read_text())["chosen"]
            report["sweep"] = f"settings from {self.args.settings}"
        else:
            report["sweep"] = {method: self.sweep(method) for method in self.args.methods}
            chosen = {method: report["sweep"][method]["chosen"] for method in self.args.methods}
        report["chosen"] = {method: chosen[method] for method in self.args.methods}
        report["base"] = {c.name: _floor(self.base(c)[1]) for c in self.evaluation}
        report["evaluation"] = {method: self.report(method, chosen[method]["settings"]) for method in self.args.methods}
        return report

    def sweep(self, method: str) -> dict:
        from dreamloom.toy.study import choose, past_edge, sweep_stages

        best: dict = {}
        stages = []
        for number, stage in enumerate(sweep_stages(method, self.args.steps)):
            candidates = [self.candidate(method, {**best, **change}) for change in stage]
            chosen, why = choose(candidates)
            while further := past_edge(method, number, candidates, chosen, self.args.steps):
                candidates.append(self.candidate(method, further))
                chosen, why = choose(candidates)
            best = chosen
            stages.append(
                {
                    "candidates": [
                        {"settings": settings, "scores": [s.as_dict() for s in scores]}
                        for settings, scores in candidates
                    ],
                    "chosen": best,
                    "why": why,
                }
            )
        return {"stages": stages, "chosen": {"settings": best, "why": stages[-1]["why"]}}

    def candidate(self, method: str, settings: dict) -> tuple[dict, list]:
        return settings, [self.tried(method, concept, settings) for concept in self.tuning]

    def report(self, method: str, settings: dict) -> dict:
        from dreamloom.toy.study import mean, spread

        rows = []
        for concept in self.evaluation:
            for seed in range(self.args.seeds):
                scores = self.evaluated(method, concept, settings, seed)
                rows.append({"concept": concept.name, "seed": seed, **scores.as_dict()})
        columns = {
            "subject": [r["subject"] for r in rows],
            "subject_lift": [r["subject_lift"] for r in rows],
            "readback_all": [r["readback"]["all"] for r in rows],
            "readback_lift": [r["readback_lift"] for r in rows],
            "prompt": [r["prompt"] for r in rows],
        }
        for group in ("shape", "colour", "texture"):
            columns[f"readback_{group}"] = [r["readback"][group] for r in rows]
        summary = {name: {"mean": round(mean(v), 4), "spread": round(spread(v), 4)} for name, v in columns.items()}
        return {"summary": summary, "rows": rows}

    def tried(self, method: str, concept, settings: dict):
        """A sweep run's scores: recorded earlier in this sweep or by a report given to --reuse, else
        trained now (a run is deterministic, so the same settings give the same scores)."""
        from dreamloom.toy.study import Scores

        key = _run_key(method, concept.name, settings)
        recorded = self._recorded.get(key)
        if recorded is None:  # each stage tries the last one's choice again: trained runs are recorded too
            scores = self.teach(method, concept, settings)
            self._recorded[key] = scores.as_dict()
            self._journal(key, scores.as_dict())
            return scores
        said = f"[family] run {next(self._runs)}/{self._planned}: {method} on {concept.name} {settings} (recorded)"
        print(said, file=sys.stderr, flush=True)
        return Scores(**recorded)

    def evaluated(self, method: str, concept, settings: dict, seed: int):
        """An evaluation run's scores and grid: recorded by a report given to --reuse with the same
        chosen settings (its grid copied), else trained now."""
        from dreamloom.toy.study import Scores

        grid = f"{method}-{concept.name}-seed{seed}"
        key = _run_key(method, concept.name, settings, seed)
        recorded = self._recorded.get(key)
        if recorded is None:
            scores = self.teach(method, concept, settings, seed=seed, grid=grid)
            self._journal(key, scores.as_dict(), grids=True)
            return scores
        scores, grids = recorded
        said = f"[family] run {next(self._runs)}/{self._planned}: {method} on {concept.name} {settings} seed {seed}"
        print(f"{said} (recorded)", file=sys.stderr, flush=True)
        source, target = grids / f"{grid}.png", self.args.out / "grids" / f"{grid}.png" if self.args.out else None
        if target is not None and source.exists() and source.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
        return Scores(**scores)

    def _journal(self, key: str, scores: dict, grids: bool = False) -> None:
        """Each trained run as it ends, in ``--out``'s runs.jsonl: ``--reuse`` takes that file too,
        so a study stopped halfway resumes where it was."""
        if self.args.out is None:
            return
        self.args.out.mkdir(parents=True, exist_ok=True)
        line = {"setup": self.setup(), "key": key, "scores": scores, "grids": grids}
        with (self.args.out / "runs.jsonl").open("a") as journal:
            journal.write(json.dumps(line) + "\n")

    def teach(self, method: str, concept, settings: dict, seed: int = 0, grid: str | None = None):
        from dreamloom.config import load_run_config
        from dreamloom.inference import load_artifact_pipeline
        from dreamloom.toy.measure import concept_fidelity
        from dreamloom.toy.study import Scores, run_document, subject_for
        from dreamloom.training.local import train_in_process

        data = self._data(concept)
        run = next(self._runs)
        output = self.scratch / "artifacts" / f"{method}-{concept.name}-{run}"
        # settings may hold training.steps: it overrides the default steps given here
        document = run_document(method, data, output, self.args.steps, self.args.batch_size, seed=seed, **settings)
        said = f"[family] run {run}/{self._planned}: {method} on {concept.name} {settings or 'defaults'} seed {seed}"
        print(said, file=sys.stderr, flush=True)
        artifact = train_in_process(load_run_config(None, document))
        pipe, _ = load_artifact_pipeline(artifact)
        shutil.rmtree(artifact)  # loaded: a sweep of DreamBooth runs would otherwise keep GBs
        references, base = self.base(concept)
        taught = concept_fidelity(
            pipe, references, subject_for(method), images_per_prompt=self.args.images_per_prompt, concept=concept
        )
        self._save_grid(grid, taught.images)
        del pipe
        gc.collect()
        return Scores.of(taught, base)

    def base(self, concept):
        """The base drawing the concept's prompts (the floor), once per concept."""
        if concept.name not in self._bases:
            from PIL import Image

            from dreamloom.models.base import load_base_model, pipeline_from_components, resolve_base_model
            from dreamloom.toy.concepts import SUBJECT
            from dreamloom.toy.measure import concept_fidelity

            folder = self._data(concept) / "subject"
            references = [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.png"))]
            pipe = pipeline_from_components(load_base_model(resolve_base_model("toy")))
            fidelity = concept_fidelity(
                pipe, references, SUBJECT, images_per_prompt=self.args.images_per_prompt, concept=concept
            )
            self._save_grid(f"base-{concept.name}", fidelity.images)
            self._bases[concept.name] = (references, fidelity)
        return self._bases[concept.name]

    def _data(self, concept) -> Path:
        from dreamloom.toy.study import write_teaching_data

        folder = self.scratch / "concepts" / concept.name
        return folder if folder.exists() else write_teaching_data(concept, folder)

    def _save_grid(self, name: str | None, images) -> None:
        if name is None or self.args.out is None:
            return
        from diffusers.utils import make_image_grid

        columns = self.args.images_per_prompt
        folder = self.args.out / "grids"
        folder.mkdir(parents=True, exist_ok=True)
        grid = make_image_grid(images, rows=len(images) // columns, cols=columns)
        grid.resize((grid.width * 2, grid.height * 2), 0).save(folder / f"{name}.png")


def recorded_runs(paths: list[Path], setup: dict) -> dict[str, object]:
    """The runs recorded in earlier reports of the same setup, by method, concept and settings (and
    seed, for evaluation runs: their scores with the folder of their grids)."""
    recorded: dict[str, object] = {}
    for path in paths:
        if path.suffix == ".jsonl":
            recorded.update(journaled_runs(path, setup))
            continue
        report = json.loads(path.read_text())
        if report["setup"] != setup:
            raise SystemExit(f"--reuse: {path} was run with another setup; run with the same options")
        for method, sweep in report["sweep"].items() if isinstance(report["sweep"], dict) else ():
            for stage in sweep["stages"] if isinstance(sweep, dict) else ():  # str: that method was not swept
                for candidate in stage["candidates"]:
                    for concept, scores in zip(setup["tuning_concepts"], candidate["scores"], strict=True):
                        recorded[_run_key(method, concept, candidate["settings"])] = scores
        for method, result in report["evaluation"].items():
            settings = report["chosen"][method]["settings"]
            for row in result["rows"]:
                scores = {k: v for k, v in row.items() if k not in ("concept", "seed")}
                recorded[_run_key(method, row["concept"], settings, row["seed"])] = (scores, path.parent / "grids")
    return recorded


def journaled_runs(path: Path, setup: dict) -> dict[str, object]:
    """The runs a study wrote to its runs.jsonl as they ended."""
    recorded: dict[str, object] = {}
    for line in path.read_text().splitlines():
        run = json.loads(line)
        if run["setup"] != setup:
            raise SystemExit(f"--reuse: {path} was run with another setup; run with the same options")
        recorded[run["key"]] = (run["scores"], path.parent / "grids") if run["grids"] else run["scores"]
    return recorded


def _run_key(method: str, concept: str, settings: dict, seed: int | None = None) -> str:
    return json.dumps([method, concept, settings, seed], sort_keys=True)


def merged(reports: list[dict]) -> dict:
    """One report from several of the same setup, each with its own methods."""
    first = reports[0]
    for other in reports[1:]:
        if other["setup"] != first["setup"] or other["base"] != first["base"]:
            raise SystemExit("--merge: these reports differ in setup or base; run them with the same options")
    joined = {"machine": first["machine"], "setup": first["setup"], "base": first["base"]}
    order = sorted(reports, key=lambda report: min(map(SUBJECT_METHODS.index, report["evaluation"])))
    for part in ("sweep", "chosen", "evaluation"):
        joined[part] = {
            method: report[part] if isinstance(report[part], str) else report[part][method]  # str: no sweep
            for report in order
            for method in report["evaluation"]
        }
    joined["seconds"] = {method: report["seconds"] for report in order for method in report["evaluation"]}
    return joined


def markdown(report: dict) -> str:
    setup = report["setup"]
    lines = [
        f"{len(setup['evaluation_concepts'])} evaluation concepts x {setup['seeds']} seed(s) on the toy base; settings "
        f"chosen on {len(setup['tuning_concepts'])} other concepts. Mean (spread) over concepts and seeds.",
        "",
        "| method | chosen settings | subject lift | read-back: all three | read-back lift | shape | colour | texture "
        "| prompt fidelity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, result in report["evaluation"].items():
        settings = ", ".join(f"{_short(k)}={v}" for k, v in report["chosen"][method]["settings"].items())
        cell = functools.partial(_cell, result["summary"])
        lines.append(
            f"| {method} | {settings or 'defaults'} | {cell('subject_lift')} | {cell('readback_all')} | "
            f"{cell('readback_lift')} | {cell('readback_shape')} | {cell('readback_colour')} | "
            f"{cell('readback_texture')} | {cell('prompt')} |"
        )
    floors = ", ".join(f"{name} {floor['readback']['all']:.2f}" for name, floor in report["base"].items())
    lines += ["", f"The base's read-back of all three on the same prompts (the floor): {floors}."]
    return "\n".join(lines) + "\n"


def _short(key: str) -> str:
    """A setting's name without its section where the section goes without saying."""
    section, _, name = key.partition(".")
    return name if section in ("optimizer", "training") else key


def _cell(summary: dict, name: str) -> str:
    return f"{summary[name]['mean']:.2f} ({summary[name]['spread']:.2f})"


def _floor(fidelity) -> dict:
    from dreamloom.toy.study import rounded

    return rounded(
        {
            "subject": fidelity.subject,
            "readback": fidelity.readback,
            "prompt": fidelity.prompt,
            "reference_ceiling": fidelity.reference_ceiling,
            "reference_readback": fidelity.reference_readback,
        }
    )


if __name__ == "__main__":
    main()
