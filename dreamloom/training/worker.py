"""What each Ray Train worker runs: the Trainer, wrapped in checkpoints, metrics and progress.

Every ``checkpoint_every`` steps (and at the end) all workers call ``ray.train.report``; rank 0
attaches a checkpoint folder (trainable tensors, optimizer, schedule; and at the end the
artifact and the final sample grid). When a worker dies, Ray restarts the group and
``ray.train.get_checkpoint()`` hands back the last checkpoint, so at most one checkpoint
interval is lost. Rank 0 also logs metrics and sample grids to MLflow and shows progress.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from dreamloom.progress import PhaseClock, Progress
from dreamloom.training.checkpoint import load_training_state, save_training_state
from dreamloom.training.job import ARTIFACT_FOLDER, FINAL_SAMPLES, WORKER_PHASE_PREFIX, TrainJob
from dreamloom.training.precision import peak_memory_bytes
from dreamloom.training.trainer import Trainer


def train_worker(job_document: dict) -> None:
    import ray.train
    import ray.train.torch

    from dreamloom.logs import quiet_library_logging

    quiet_library_logging()
    _quiet_ray_train_reports()
    job = TrainJob.model_validate(job_document["job"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(job_document["cpus"])
    is_main = rank == 0
    clock = PhaseClock()
    with clock.phase("model_and_caches"):
        trainer = Trainer(
            job, device, rank, world, wrap=ray.train.torch.prepare_model, barrier=_barrier, show_progress=is_main
        )
        start = _restore(trainer, ray.train.get_checkpoint(), device)
    run = _RankZeroReporting(job, start, device, clock) if is_main else None
    total = job.config.training.steps
    for step in range(start + 1, total + 1):
        began = time.perf_counter()
        loss = trainer.train_step(step)
        seconds = time.perf_counter() - began
        clock.add("steps", seconds)
        if run:
            run.step(step, loss, trainer.learning_rate, seconds, world)
            if _due(step, job.config.validation.every) and step != total:
                with clock.phase("sample_grids"):
                    run.samples(trainer, step)
        if _due(step, job.config.training.checkpoint_every) or step == total:
            _report(trainer, step, start, final=step == total, reporting=run)
    if run:
        run.close()


def _quiet_ray_train_reports() -> None:
    """Ray Train logs every report at INFO on a logger named after its source file, outside
    ``ray.train`` (so ``LoggingConfig`` does not reach it); our progress lines say the same."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logger = getattr(context, "logger", None)
    if isinstance(logger, logging.Logger):
        logger.setLevel(logging.WARNING)


def _restore(trainer: Trainer, checkpoint, device) -> int:
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = load_training_state(Path(folder), device)
    trainer.restore(state)
    return state.step


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _report(trainer: Trainer, step: int, start: int, final: bool, reporting: _RankZeroReporting | None) -> None:
    import ray.train

    metrics = {"step": step, "resumed_from_step": start, "final": final}
    if reporting is None:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=f"checkpoint_{step:07d}")
        return
    clock = reporting.clock
    with tempfile.TemporaryDirectory(prefix="dreamloom-ckpt-") as folder:
        with clock.phase("checkpoints"):
            save_training_state(Path(folder), trainer.snapshot(step))
            artifact = Path(folder) / ARTIFACT_FOLDER
            if final:
                trainer.save_artifact(artifact)
        if final and trainer.config.validation.final_grid:
            with clock.phase("sample_grids"):
                grid = trainer.render_samples()
                (artifact / FINAL_SAMPLES).parent.mkdir(parents=True, exist_ok=True)
                grid.save(artifact / FINAL_SAMPLES)
                reporting.grid(grid, step)
        reporting.flush()
        # Persisting the checkpoint happens inside report: the driver counts it as Ray Train's time.
        metrics.update(reporting.summary())
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=f"checkpoint_{step:07d}",
        )


class _RankZeroReporting:
    """Rank 0's view of the run: progress on screen, metrics and grids in MLflow."""

    def __init__(self, job: TrainJob, start: int, device: torch.device, clock: PhaseClock):
        from dreamloom.tracking import MetricsLogger

        self.clock = clock
        self.job, self.start = job, start
        self.settings = job.config.training
        self.progress = Progress(self.settings.steps, "train", initial=start)
        self.logger = MetricsLogger(job.tracking_uri, job.mlflow_run_id) if job.mlflow_run_id else None
        self.device = device
        self.step_times: list[float] = []
        self.last_loss = float("nan")
        if self.logger and start:
            self.logger.log(start, resumed_from_step=start)

    def step(self, step: int, loss: float, lr: float, seconds: float, world: int) -> None:
        self.step_times.append(seconds)
        self.last_loss = loss
        images = self.settings.batch_size * self.settings.gradient_accumulation_steps * world
        self.progress.update(loss=loss, lr=lr)
        if self.logger and (step % self.settings.log_every == 0 or step == self.settings.steps):
            self.logger.log(step, loss=loss, lr=lr, step_seconds=seconds, images_per_second=images / seconds)

    def samples(self, trainer: Trainer, step: int) -> None:
        self.grid(trainer.render_samples(), step)

    def grid(self, image, step: int) -> None:
        if self.logger:
            self.logger.image(image, step)

    def summary(self) -> dict:
        steady = self.step_times[1:] or self.step_times  # the first step pays for warm-up
        return {
            "loss": self.last_loss,
            "median_step_seconds": statistics.median(steady) if steady else float("nan"),
            "peak_memory_bytes": peak_memory_bytes(self.device),
            **{f"{WORKER_PHASE_PREFIX}{name}": seconds for name, seconds in self.clock.seconds.items()},
        }

    def flush(self) -> None:
        if self.logger:
            summary = self.summary()
            self.logger.log(
                self.progress.done,
                median_step_seconds=summary["median_step_seconds"],
                peak_memory_mib=summary["peak_memory_bytes"] / 2**20,
            )
            self.logger.flush()

    def close(self) -> None:
        if self.logger:
            self.logger.flush()
