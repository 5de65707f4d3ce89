"""The Models tab over the registry: versions with their metrics and lineage, the pictures each
version was judged by, promotion through the gate (its verdict metric by metric), rollback, and
deploying the champion to Triton as a job whose progress the page follows."""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from dreamloom.errors import DreamloomError
from dreamloom.registry import CHAMPION, Promotion, download_artifact, list_versions, promote, resolve, rollback
from dreamloom.registry.gate import GateConfig
from dreamloom.registry.store import client
from dreamloom.studio.jobs import Job, Stage, job_folder
from dreamloom.tracking import Tag

TABLE_COLUMNS = ["model", "version", "aliases", "method", "base", "metrics", "created"]
MAX_GRIDS = 6


def version_table(name: str | None = None) -> list[list]:
    from datetime import UTC, datetime

    rows = []
    for row in list_versions(name or None):
        metrics = ", ".join(f"{metric} {value:.3f}" for metric, value in sorted(row.metrics.items()))
        created = datetime.fromtimestamp(row.created / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        base = row.lineage.base_model + (" (random weights)" if row.lineage.base_model_weights != "pretrained" else "")
        rows.append([row.name, row.version, ", ".join(row.aliases), row.method, base, metrics or "none", created])
    return rows


def version_details(name: str, version: str) -> tuple[str, list[tuple[Image.Image, str]]]:
    """A version's lineage and metrics as markdown, and its pictures: the grids its training run
    and its evaluation logged (read from those runs, never by downloading the weights)."""
    registered = resolve(name, version)
    tags = registered.tags
    lines = [f"**{name} v{registered.version}**"]
    lines += [f"- {key.removeprefix('dreamloom.')}: {value}" for key, value in sorted(tags.items()) if value]
    pictures = []
    for tag, what in ((Tag.TRAINING_RUN_ID, "training"), (Tag.EVAL_RUN_ID, "evaluation")):
        if run_id := tags.get(tag):
            pictures += [(load(path), f"{what}: {caption(path)}") for path in logged_grids(run_id)]
    return "\n".join(lines), pictures


def logged_grids(run_id: str, folder: str = "images") -> list[str]:
    """The grids a run logged as MLflow images (``log_image``, keyed by step), the latest last:
    their artifact paths, listed without downloading anything."""
    paths = sorted(entry.path for entry in client().list_artifacts(run_id, folder) if entry.path.endswith(".png"))
    return [f"{run_id}/{path}" for path in paths[-MAX_GRIDS:]]


def load(grid: str) -> Image.Image:
    """One grid from ``logged_grids``, downloaded."""
    run_id, path = grid.split("/", 1)
    with tempfile.TemporaryDirectory() as scratch:
        return Image.open(client().download_artifacts(run_id, path, scratch)).convert("RGB")


def caption(grid: str) -> str:
    return Path(grid).name.split("+timestamp")[0]


def compare(name: str, versions: tuple[str, str], prompts: list[str], seed: int, images: int, steps: int):
    """Two registered versions (deployed or not: a challenger usually is not) rendered here, on the
    same prompts and seeds, one row each: image ``i`` of every prompt uses ``seed + i``."""
    from dreamloom.generation import GenerationRequest, generate
    from dreamloom.inference import load_artifact_pipeline

    request = GenerationRequest(prompts, images_per_prompt=images, steps=steps, seed=seed)
    rows = []
    for version in versions:
        pipe, _ = load_artifact_pipeline(download_artifact(resolve(name, version)))
        rows.append([image for row in generate(pipe, request) for image in row])
    return rows


def promote_version(name: str, version: str, reason: str = "", force: bool = False) -> tuple[Promotion, str]:
    """Promote through the gate; the verdict as a markdown table, metric by metric."""
    promotion = promote(name, str(version), GateConfig(), force=force, reason=reason or None)
    return promotion, verdict_markdown(promotion)


def verdict_markdown(promotion: Promotion) -> str:
    if promotion.previous_champion == promotion.version and not promotion.checks:
        return f"**{promotion.name} v{promotion.version} already is the champion.**"
    if promotion.moved:
        headline = f"**Promoted {promotion.name} v{promotion.version} to {CHAMPION}**"
        headline += " (forced past the gate; the reason is recorded)" if promotion.forced else ""
    else:
        headline = f"**The gate refused {promotion.name} v{promotion.version}**; the champion stays"
        headline += f" v{promotion.previous_champion}" if promotion.previous_champion else " unset"
    rows = [
        f"| {'pass' if check.passed else 'FAIL'} | {check.metric} | {check.message} |" for check in promotion.checks
    ]
    return "\n".join([headline, "", "| verdict | metric | check |", "|---|---|---|", *rows])


def roll_back(name: str) -> str:
    was, now = rollback(name)
    return f"**{name}: {CHAMPION} moved back from v{was} to v{now}.** Deploy it to serve it."


def deploy_job(name: str, triton_url: str, store: Path | None, model: str, runs: Path) -> Job:
    if not triton_url:
        raise DreamloomError("no Triton to deploy to: start the studio with --triton-url (or --serve-local)")
    command = ["deploy", f"{name}@{CHAMPION}", "--url", triton_url, "--model-name", model]
    if store is not None:
        command += ["--store", str(store)]
    return Job(f"deploy {name}", [Stage("deploying", command)], job_folder(runs, f"deploy-{name}"))
