"""Everything that can be wrong with a training request, found before Ray starts or a model loads:
the output folder, earlier run state, devices, the base model, every image, the method's own
checks. ``plan_job`` ends with the ``TrainJob`` a worker needs, all paths resolved."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError
from dreamloom.models.base import BaseModelRef, resolve_base_model
from dreamloom.settings import redacted, tracking_uri
from dreamloom.training.job import TrainJob, prepare_class_data, training_data
from dreamloom.training.prior import class_images_folder


def plan_job(config: RunConfig) -> TrainJob:
    """Validate and prepare the data, find the base model: everything a worker needs, no compute."""
    dataset = training_data(config)
    class_dataset = prepare_class_data(config)
    base = resolve_base_model(config.base_model, config.revision)
    config.method_type.check(config, base, dataset)
    return TrainJob(
        config=config,
        base_model=base,
        dataset_root=str(dataset.root),
        dataset_source=dataset.source,
        class_images=_class_folder(config, base, class_dataset),
        class_dataset_root=str(class_dataset.root) if class_dataset else None,
        tracking_uri=tracking_uri(),
    )


def check_run_state(run_folder: Path, run_name: str, resume: bool) -> None:
    has_state = run_folder.is_dir() and any(run_folder.iterdir())
    if has_state and not resume:
        raise DreamloomError(
            f"run {run_name!r} already has training state at {run_folder}; pass --resume to continue "
            "it, or choose another --run-name or --output"
        )
    if resume and not has_state:
        raise DreamloomError(f"nothing to resume: run {run_name!r} has no state at {run_folder}")


# A resumed run may change these and nothing else: how long it trains, how often it checkpoints and
# draws samples, how many failures it survives, where the artifact goes. Anything else changes the
# math the checkpoint was made with, and the manifest would describe a run that never happened.
RESUMABLE = (
    "output",
    "data.path",  # where the data is may change (remote launchers stage it anew); its content may not
    "prior.class_data",
    "training.steps",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "validation.",
    "scaling.max_failures",
)
RUN_RECORD = "dreamloom-run.json"


def run_record(config: RunConfig, job: TrainJob) -> dict[str, str]:
    """What a run trains with, flat: its settings, its data's (and own class images') content hash
    and its base's revision."""
    from dreamloom.data.prepare import PreparedDataset
    from dreamloom.tracking import flatten

    record = flatten(config.model_dump(mode="json"))
    record["data.content_hash"] = PreparedDataset.load(Path(job.dataset_root)).dataset_hash
    if job.class_dataset_root:
        record["prior.class_content_hash"] = PreparedDataset.load(Path(job.class_dataset_root)).dataset_hash
    record["base_model.revision"] = str(job.base_model.revision)
    return record


def record_run(run_folder: Path, record: dict[str, str]) -> None:
    """Written when a run starts; a resume is held against it."""
    run_folder.mkdir(parents=True, exist_ok=True)
    (run_folder / RUN_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))


def check_resume(run_folder: Path, record: dict[str, str]) -> None:
    """Refuse a resume whose settings, data or base differ from the run's in anything but RESUMABLE."""
    path = run_folder / RUN_RECORD
    if not path.is_file():
        print(
            f"[dreamloom] warning: {run_folder.name} has no {RUN_RECORD} (made before dreamloom kept one); "
            "its settings cannot be compared with this resume's",
            flush=True,
        )
        return
    started = json.loads(path.read_text())
    keys = {key for key in set(started) | set(record) if not key.startswith(RESUMABLE)}
    changed = sorted(key for key in keys if started.get(key) != record.get(key))
    if changed:
        lines = "\n".join(
            f"  - {key}: {started.get(key, '(unset)')} -> {record.get(key, '(unset)')}" for key in changed
        )
        raise DreamloomError(
            f"run {run_folder.name!r} cannot resume with other settings; it started with different values for:\n"
            f"{lines}\nresume with the run's own settings (only {', '.join(RESUMABLE)} may change), or start a "
            "new run with another --run-name"
        )


def check_devices(config: RunConfig) -> None:
    scaling, precision = config.scaling, config.training.mixed_precision
    if os.environ.get("RAY_ADDRESS") and tracking_uri().startswith(("sqlite:", "file:")):
        print(
            f"[dreamloom] warning: RAY_ADDRESS is set but MLflow tracks to {redacted(tracking_uri())}; workers on "
            "other machines cannot write there. Set MLFLOW_TRACKING_URI to an MLflow server.",
            flush=True,
        )
    if scaling.gpus_per_worker == 0 and precision == "fp16":
        raise DreamloomError("training.mixed_precision fp16 needs GPUs; set scaling.gpus_per_worker or use bf16/no")
    if scaling.gpus_per_worker and not os.environ.get("RAY_ADDRESS"):
        import torch

        available = torch.cuda.device_count()
        wanted = scaling.gpus_per_worker * scaling.workers
        if wanted > available:
            raise DreamloomError(
                f"the run asks for {wanted:g} GPUs ({scaling.workers} workers x {scaling.gpus_per_worker:g}) "
                f"but this machine has {available}; lower --workers/--gpus-per-worker or set RAY_ADDRESS"
            )


def _class_folder(config: RunConfig, base: BaseModelRef, class_dataset) -> str | None:
    if not config.prior_enabled or class_dataset is not None:
        return None
    return str(class_images_folder(base, config.prior, config.data.resolution))
