"""Evaluating artifacts: fidelity metrics over a prompt set, sample grids, results in MLflow."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from dreamloom.artifacts import ArtifactManifest, read_manifest
from dreamloom.errors import DreamloomError
from dreamloom.evaluation.encoders import default_encoders
from dreamloom.evaluation.evaluate import METRICS, EvalResult, EvalSettings, evaluate, reference_images

EXPERIMENT = "dreamloom-evaluations"
_LEAD_IN = re.compile(r"^(a|an)\s+(photo|picture|image|rendering|shot)\s+of\s+((a|an|the)\s+)?", re.IGNORECASE)

__all__ = ["EXPERIMENT", "METRICS", "EvalResult", "EvalSettings", "evaluate", "evaluate_artifact", "log_evaluation"]


def subject_of(manifest: ArtifactManifest) -> str:
    """The phrase naming the concept: the trigger and its class word ("sks shoe") when the instance
    prompt has them, else the instance prompt without its "a photo of" lead-in."""
    if manifest.trigger_token:
        named = re.search(rf"\b{re.escape(manifest.trigger_token)}\s+\w+", manifest.instance_prompt)
        if named:
            return named.group(0)
    subject = _LEAD_IN.sub("", manifest.instance_prompt).strip()
    subject = subject or manifest.trigger_token or ""
    if not subject:
        raise DreamloomError("the artifact does not say what its concept is called; pass --subject 'sks sneaker'")
    return subject


def settings_for(manifest: ArtifactManifest, **overrides) -> EvalSettings:
    """Evaluation settings from the manifest (subject, prompt kind, encoders), then ``overrides``."""
    clip, dino = default_encoders(manifest.base_model.spec)
    kind = manifest.method_type.evaluation_kind(manifest.config)
    settings = EvalSettings(
        subject=subject_of(manifest) if not overrides.get("subject") else overrides["subject"],
        kind="style" if kind == "style" else "object",  # a layout is judged on object prompts
        prompts=_default_prompts(manifest.base_model.spec),
        clip_encoder=clip,
        dino_encoder=dino,
    )
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _default_prompts(base_spec: str) -> tuple[str, ...]:
    """The toy base is judged in settings its world has (photo templates mean nothing to it)."""
    if base_spec == "toy":
        from dreamloom.toy.concepts import EVALUATION_PROMPTS

        return EVALUATION_PROMPTS
    return ()


def evaluate_artifact(artifact: Path, references: Path | None = None, **overrides) -> tuple[EvalResult, EvalSettings]:
    """Load the artifact's pipeline and evaluate it against its training images (or ``references``)."""
    from dreamloom.inference import load_artifact_pipeline

    manifest = read_manifest(artifact)
    settings = settings_for(manifest, **overrides)
    folder = references or (manifest.config.data.path if manifest.config else None)
    if folder is None:
        raise DreamloomError("the artifact does not record its training images; pass --references DIR")
    refs = reference_images(Path(folder))
    print(f"[evaluate] loading {Path(artifact).name} and the CLIP and DINO encoders", flush=True)
    pipe, _ = load_artifact_pipeline(artifact)
    inputs = manifest.method_type.evaluation_inputs(manifest.config, refs[0])
    return evaluate(pipe, refs, settings, resolution=manifest.resolution or None, **inputs), settings


def log_evaluation(result: EvalResult, settings: EvalSettings, subject_of_run: dict[str, str]) -> str:
    """An MLflow run holding the metrics, the per-prompt table and a grid per prompt; returns its id."""
    from mlflow.entities import Metric, Param

    from dreamloom.tracking import Tag, client, experiment_id, log_picture, plain

    mlflow = client()
    tags = {f"dreamloom.{key}": value for key, value in subject_of_run.items()}
    tags.update(plain({Tag.EVAL_CLIP_ENCODER: result.encoders["clip"], Tag.EVAL_DINO_ENCODER: result.encoders["dino"]}))
    run = mlflow.create_run(
        experiment_id(mlflow, EXPERIMENT), run_name=f"eval-{subject_of_run.get('evaluated', 'artifact')}", tags=tags
    )
    run_id = run.info.run_id
    try:
        params = {
            "subject": settings.subject,
            "kind": settings.kind,
            "prompts": len(settings.templates),
            "images_per_prompt": settings.images_per_prompt,
            "steps": settings.steps,
            "guidance": settings.guidance,
            "seed": settings.seed,
            "clip_encoder": result.encoders["clip"],
            "dino_encoder": result.encoders["dino"],
        }
        metrics = [Metric(name, value, 0, 0) for name, value in result.metrics.items()]
        metrics += [
            Metric(f"prompt_{name}", row[name], 0, index)
            for index, row in enumerate(result.per_prompt)
            for name in METRICS
        ]
        mlflow.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        mlflow.log_dict(run_id, {"per_prompt": result.per_prompt, "metrics": result.metrics}, "evaluation.json")
        for index, (_, grid) in enumerate(result.grids):
            log_picture(mlflow, run_id, grid, f"prompt_{index:02d}", f"grids/prompt_{index:02d}.png")
    except BaseException:
        mlflow.set_terminated(run_id, status="FAILED")
        raise
    mlflow.set_terminated(run_id)
    return run_id


def grids_html(result: EvalResult, title: str = "dreamloom evaluation") -> str:
    """A self-contained HTML page of the metrics and a grid per prompt (for the KFP UI)."""
    import base64
    import html
    import io

    rows = []
    for (prompt, grid), scores in zip(result.grids, result.per_prompt, strict=True):
        buffer = io.BytesIO()
        grid.save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode()
        numbers = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "prompt")
        rows.append(
            f"<h3>{html.escape(prompt)}</h3><p>{numbers}</p>"
            f'<img src="data:image/png;base64,{data}" style="image-rendering:pixelated;height:160px">'
        )
    summary = " | ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
    encoders = f"CLIP role: {result.encoders['clip']}; DINO role: {result.encoders['dino']}"
    return (
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h2>{html.escape(title)}</h2><p>{summary}</p><p>{html.escape(encoders)}</p>{''.join(rows)}</body></html>"
    )
