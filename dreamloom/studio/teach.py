"""Teaching a concept from the browser: the dropped pictures checked with prepare's own rules,
the advisor's recommendation, the run config built and validated from the form, and the job that
trains and registers it where the user chose."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image

from dreamloom.advisor import Needs, Recommendation, recommend
from dreamloom.config import RunConfig, load_run_config, parse_override
from dreamloom.data.images import IMAGE_SUFFIXES, open_rgb
from dreamloom.data.prepare import PrepareOptions, inspect_folder
from dreamloom.errors import ConfigError, DataValidationError, DreamloomError
from dreamloom.evaluation.evaluate import EvalSettings
from dreamloom.registry.store import check_model_name
from dreamloom.sizing import Architecture
from dreamloom.studio.jobs import Job, Stage, job_folder

THUMBNAIL = 160
REFUSED_TILE = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (200, 60, 60))  # where a refused picture would be
FOLDER_PROBLEM = "(folder)"
# Where training runs: the train command's launchers, and the personalize pipeline through KFP.
LAUNCHERS = {
    "local": "Ray on this machine",
    "ray": "a Ray cluster (Ray Jobs API at the Ray address)",
    "kuberay": "a RayJob in this Kubernetes namespace",
    "kfp-local": "the personalize pipeline, KFP's local runner",
    "kfp": "the personalize pipeline on a KFP host",
}


LOCATION_FIELDS = {"scaling.storage_path"}  # a location typed as text (it may be a URI)


@dataclass(frozen=True)
class Verdict:
    """One dropped file: accepted for training, or why not."""

    name: str
    accepted: bool
    message: str
    thumbnail: Image.Image | None = None

    @property
    def caption(self) -> str:
        return f"{self.name}: ok, {self.message}" if self.accepted else f"{self.name} refused: {self.message}"


def check_uploads(files: list[Path], folder: Path, resolution: int) -> list[Verdict]:
    """Copy the dropped files into ``folder`` (a fresh training folder) and check them as
    ``dreamloom prepare`` would; the refused ones are taken out again, so the folder holds what
    trains."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    verdicts, copied = [], []
    for file in files:
        name = Path(file).name
        if name.startswith(".") or (folder / name).exists():
            verdicts.append(
                Verdict(name, False, "a hidden file or a second file of that name; rename it", REFUSED_TILE)
            )
            continue
        shutil.copyfile(file, folder / name)  # a regular file from the upload, never a link
        copied.append(name)
    problems = _problems(folder, resolution)
    for name in copied:
        problem = problems.get(name) or problems.get(FOLDER_PROBLEM)
        if problem:
            (folder / name).unlink()
        verdicts.append(_verdict(folder, name, problem, resolution))
    if not any(verdict.accepted for verdict in verdicts):
        shutil.rmtree(folder)
    return verdicts


def _problems(folder: Path, resolution: int) -> dict[str, str]:
    try:
        inspect_folder(folder, PrepareOptions(resolution=resolution))
    except DataValidationError as exc:
        return dict(exc.problems)
    return {}


def _verdict(folder: Path, name: str, problem: str | None, resolution: int) -> Verdict:
    path = folder / name
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return Verdict(name, problem is None, problem or "a caption")
    if problem:
        return Verdict(name, False, problem, REFUSED_TILE)
    image = open_rgb(path, PrepareOptions(resolution=resolution).max_image_pixels)
    thumbnail = image.copy()
    thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
    return Verdict(name, True, f"{image.width}x{image.height}", thumbnail)


def verdicts_markdown(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return "Drop pictures of the concept (PNG, JPEG, WebP, BMP, TIFF or GIF; captions as name.txt)."
    accepted = sum(verdict.accepted for verdict in verdicts)
    lines = [f"**{accepted} of {len(verdicts)} files accepted.**"]
    lines += [f"- refused **{v.name}**: {v.message}" for v in verdicts if not v.accepted]
    return "\n".join(lines)


def advise(base_model: str, concepts: int, **answers: bool) -> Recommendation:
    return recommend(Needs(concepts=max(1, int(concepts)), **answers), Architecture.for_base(base_model))


def advice_markdown(advice: Recommendation) -> str:
    lines = [f"**Recommended: {advice.method}**", *[f"- {reason}" for reason in advice.reasons + advice.notes]]
    lines += ["", "| method | trains | artifact |", "|---|---:|---:|"]
    for method, estimate in advice.estimates.items():
        marker = " (recommended)" if method == advice.method else ""
        lines.append(
            f"| {method}{marker} | {estimate.trainable_params:,} | {estimate.artifact_bytes / 2**20:,.1f} MiB |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class TeachForm:
    """What the Teach tab asks for; ``extra`` holds any other field as KEY=VALUE lines."""

    name: str
    method: str
    base_model: str
    data: Path
    instance_prompt: str
    resolution: int
    steps: int
    batch_size: int
    learning_rate: float
    class_prompt: str = ""
    extra: str = ""
    launcher: str = "local"
    ray_address: str = ""
    kfp_host: str = ""
    eval_steps: int = 0  # 0: the evaluation's default
    eval_images_per_prompt: int = 0


def run_config(form: TeachForm, output: Path) -> RunConfig:
    """The validated run config; every problem is named before anything starts."""
    check_model_name(form.name)
    if not form.data.is_dir() or not any(form.data.iterdir()):
        raise DreamloomError("no accepted pictures yet: drop pictures of the concept first")
    overrides = {
        "method": form.method,
        "base_model": form.base_model,
        "data.path": str(form.data),
        "data.instance_prompt": form.instance_prompt,
        "data.resolution": int(form.resolution),
        "training.steps": int(form.steps),
        "training.batch_size": int(form.batch_size),
        "optimizer.learning_rate": float(form.learning_rate),
        "output": str(output),
    }
    if form.class_prompt.strip():
        overrides["prior.class_prompt"] = form.class_prompt.strip()
    for line in form.extra.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = parse_override(line.strip())
            _check_settable(key)
            overrides[key] = value
    return load_run_config(None, overrides)


def _check_settable(dotted: str) -> None:
    """Folders on the studio's machine are the studio's to choose: a page user names no path (the
    data folder, the output, class pictures, Ray's storage), so the form cannot read or write
    elsewhere on the server."""
    try:
        annotation = _field(dotted).annotation
    except (KeyError, AttributeError):
        return  # an unknown field: the run config's own validation names it
    if dotted in LOCATION_FIELDS or Path in (annotation, *getattr(annotation, "__args__", ())):
        raise ConfigError(f"{dotted} is a folder on the studio's machine, which the studio chooses; leave it out")


def teaching_job(form: TeachForm, runs: Path) -> Job:
    """Train and register ``form`` where it asks; the job's folder keeps the run config and the log.
    Everything is checked before the folder is written, so a refused form leaves nothing behind."""
    if form.launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {form.launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    folder = job_folder(runs, form.name)
    config = run_config(form, folder / "artifact")
    evaluation = _evaluation_flags(form)
    config_file = folder / "run.yaml"
    document = config.model_dump(mode="json")
    if form.launcher in ("kfp-local", "kfp"):
        document.pop("output")  # the pipeline chooses where each step writes
        where = ["--local"] if form.launcher == "kfp-local" else ["--host", _required(form.kfp_host, "the KFP host")]
        action = "run" if form.launcher == "kfp-local" else "submit"
        evaluation = [flag.replace("--images-per-prompt", "--eval-images-per-prompt") for flag in evaluation]
        stages = [
            Stage("pipeline", ["pipeline", action, str(config_file), "--model-name", form.name, *where, *evaluation])
        ]
        env = None
    else:
        env = {"RAY_ADDRESS": _required(form.ray_address, "the Ray address")} if form.launcher == "ray" else None
        train = ["train", "--config", str(config_file), "--launcher", form.launcher]
        register = ["registry", "register", "--artifact", str(config.output), "--name", form.name, *evaluation]
        stages = [Stage("training", train), Stage("registering", register)]
    folder.mkdir(parents=True)
    config_file.write_text(yaml.safe_dump(document, sort_keys=False))
    return Job(form.name, stages, folder, env)


def _evaluation_flags(form: TeachForm) -> list[str]:
    """The registration's evaluation flags, checked now rather than after training."""
    checked = {"images_per_prompt": form.eval_images_per_prompt, "steps": form.eval_steps}
    EvalSettings(subject="the concept", **{key: int(value) for key, value in checked.items() if value})
    flags = []
    if form.eval_steps:
        flags += ["--eval-steps", str(int(form.eval_steps))]
    if form.eval_images_per_prompt:
        flags += ["--images-per-prompt", str(int(form.eval_images_per_prompt))]
    return flags


def _required(value: str, what: str) -> str:
    if not value.strip():
        raise ConfigError(f"this launcher needs {what}; fill it in")
    return value.strip()


def field_help(dotted: str) -> str:
    """The run config's own description of a field, e.g. ``training.steps``."""
    return _field(dotted).description or ""


def _field(dotted: str):
    model = RunConfig
    *sections, name = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name]
