"""The five ways to teach a concept, compared on the toy base the way the DreamBooth paper compares them.

Each method learns the same new concept (default: ``hexagon``, an orange hexagon the toy base never
saw) from its five pictures, then draws it in the evaluation prompts ("a sks shape on a gray
background, top left", ...). The toy evaluator scores

- subject fidelity: cosine of the subject embedding (DINO's role) to the five references;
- prompt fidelity: the share of the prompt's other attributes (background, position, count) the
  attribute classifiers read back from the picture;

with the untouched base, given the same prompts, as the floor. ControlNet does not learn a subject:
it learns to follow a layout, so it is scored by edge F1 between the canny edges it was given and
those of the picture it drew, against the base drawing the same captions without control. The
layouts place an object anywhere at any size and the captions do not say where, so only the
edges carry the layout.

Training time and peak memory are measured in a fresh subprocess per method (peak RSS on CPU, peak
allocated on CUDA), training in process without Ray so the number is the method's own. Prints JSON
and a markdown table; ``--out DIR`` writes both plus a picture grid per method.

    .venv/bin/python bench/methods.py                     # all methods, about 5 minutes on 2 cores
    .venv/bin/python bench/methods.py --methods lora dreambooth --steps 200 --out bench/results/methods
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import bench_process, emit_with_table  # bench/report.py: these scripts run with bench/ on sys.path

from dreamloom.toy.study import METHOD_SETTINGS, SUBJECT_METHODS, subject_for

ALL_METHODS = (*SUBJECT_METHODS, "controlnet")
# ControlNet learns edges -> pictures from freely placed objects (other seeds than the layouts it is scored on)
CONTROLNET_SCENES = 64


def main() -> None:
    args = _parse()
    bench_process(args.threads)
    if args.train_one:
        print(json.dumps(_train_one(args, *args.train_one)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        report = _run(args, Path(scratch))
    emit_with_table(report, markdown(report), args.out, "methods")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=list(ALL_METHODS), choices=ALL_METHODS)
    parser.add_argument("--concept", default="hexagon", help="a concept from dreamloom.toy.concepts")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="folder for methods.json, methods.md and a picture grid per method")
    parser.add_argument("--train-one", nargs=2, metavar=("METHOD", "SCRATCH"), help=argparse.SUPPRESS)
    return parser.parse_args()


def _run(args, scratch: Path) -> dict:
    from dreamloom.models.base import load_base_model, pipeline_from_components, resolve_base_model
    from dreamloom.toy.concepts import SUBJECT
    from dreamloom.toy.measure import concept_fidelity, layout_adherence, layout_scenes

    _write_data(args.concept, scratch)
    references = _references(scratch / "concept" / "subject")
    base = pipeline_from_components(load_base_model(resolve_base_model("toy")))
    floor = concept_fidelity(base, references, SUBJECT, images_per_prompt=args.images_per_prompt)
    report = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "setup": {
            "base_model": "toy",
            "concept": args.concept,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "images_per_prompt": args.images_per_prompt,
            "settings": {method: METHOD_SETTINGS[method] for method in args.methods},
        },
        "reference_ceiling": round(floor.reference_ceiling, 4),
        "base": {"subject_fidelity": round(floor.subject, 4), "prompt_fidelity": round(floor.prompt, 4)},
        "methods": {},
    }
    _save_grid(args.out, "base", floor.images, args.images_per_prompt)
    layouts = layout_scenes()
    for method in args.methods:
        print(f"[bench] training {method} ...", file=sys.stderr, flush=True)
        row = _train_in_subprocess(args, method, scratch)
        pipe = _artifact_pipeline(Path(row.pop("artifact")))
        if method == "controlnet":
            with_control, images = layout_adherence(pipe, layouts, control=True)
            without, _ = layout_adherence(base, layouts, control=False)
            row |= {"layout_edge_f1": round(with_control, 4), "base_layout_edge_f1": round(without, 4)}
            _save_grid(args.out, method, [picture for _, picture in layouts] + images, len(layouts))
        else:
            fidelity = concept_fidelity(pipe, references, subject_for(method), images_per_prompt=args.images_per_prompt)
            row |= {"subject_fidelity": round(fidelity.subject, 4), "prompt_fidelity": round(fidelity.prompt, 4)}
            _save_grid(args.out, method, fidelity.images, args.images_per_prompt)
        report["methods"][method] = row
    return report


def _write_data(concept: str, scratch: Path) -> None:
    from dreamloom.toy.concepts import CONCEPTS
    from dreamloom.toy.measure import write_layout_scenes
    from dreamloom.toy.study import write_teaching_data

    write_teaching_data(CONCEPTS[concept], scratch / "concept")
    write_layout_scenes(scratch / "scenes", CONTROLNET_SCENES, seed=99)


def _references(folder: Path):
    from PIL import Image

    return [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.png"))]


def run_config(method: str, scratch: Path, steps: int, batch_size: int):
    """The run config a method trains with in this benchmark (ControlNet on the layout scenes)."""
    from dreamloom.config import load_run_config
    from dreamloom.toy.study import run_document

    scenes = {"data.path": str(scratch / "scenes")} if method == "controlnet" else {}
    document = run_document(method, scratch / "concept", scratch / "artifacts" / method, steps, batch_size, **scenes)
    return load_run_config(None, document)


def _train_in_subprocess(args, method: str, scratch: Path) -> dict:
    command = [sys.executable, __file__, "--train-one", method, str(scratch), "--threads", str(args.threads)]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _train_one(args, method: str, scratch: str) -> dict:
    from dreamloom.training.local import train_in_process
    from dreamloom.training.precision import peak_rss_bytes

    config = run_config(method, Path(scratch), args.steps, args.batch_size)
    started = time.perf_counter()
    artifact = train_in_process(config, progress=True)
    seconds = time.perf_counter() - started
    weights = sum(path.stat().st_size for path in artifact.rglob("*.safetensors"))
    return {
        "artifact": str(artifact),
        "train_seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
        "artifact_kib": round(weights / 1024, 1),
    }


def _artifact_pipeline(artifact: Path):
    from dreamloom.inference import load_artifact_pipeline

    pipe, _ = load_artifact_pipeline(artifact)
    return pipe


def _save_grid(out: Path | None, name: str, images, columns: int) -> None:
    if out is None:
        return
    from diffusers.utils import make_image_grid

    out.mkdir(parents=True, exist_ok=True)
    grid = make_image_grid(images, rows=len(images) // columns, cols=columns)
    grid.resize((grid.width * 2, grid.height * 2), 0).save(out / f"{name}.png")


def markdown(report: dict) -> str:
    base = report["base"]
    lines = [
        f"Concept `{report['setup']['concept']}` on the toy base, {report['setup']['steps']} steps, "
        f"batch {report['setup']['batch_size']}; reference ceiling (references to each other): "
        f"{report['reference_ceiling']:.3f}",
        "",
        "| method | subject fidelity | prompt fidelity | layout edge F1 | train s | peak RSS MiB | artifact KiB |",
        "|---|---|---|---|---|---|---|",
        f"| base (floor) | {base['subject_fidelity']:.3f} | {base['prompt_fidelity']:.3f} | | | | |",
    ]
    for method, row in report["methods"].items():
        layout = ""
        if "layout_edge_f1" in row:
            layout = f"{row['layout_edge_f1']:.3f} (base {row['base_layout_edge_f1']:.3f})"
        subject = f"{row['subject_fidelity']:.3f}" if "subject_fidelity" in row else ""
        prompt = f"{row['prompt_fidelity']:.3f}" if "prompt_fidelity" in row else ""
        lines.append(
            f"| {method} | {subject} | {prompt} | {layout} | {row['train_seconds']:.0f} | "
            f"{row['peak_rss_mib']:.0f} | {row['artifact_kib']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
