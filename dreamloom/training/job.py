"""What every launcher shares: the result of a run, the contract between a launcher and the job it
starts on a cluster (environment variables, log markers, the entrypoint), where runs keep their
state, and the checks and data preparation that come before any compute.

A leaf of the launch layer: the local driver, the Ray Jobs and KubeRay launchers and the job
entrypoint import it; it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from dreamloom import artifacts
from dreamloom.config import RunConfig
from dreamloom.data.prepare import PreparedDataset, PrepareOptions, prepare_dataset, prepare_training_data
from dreamloom.errors import DreamloomError
from dreamloom.models.base import BaseModelRef
from dreamloom.settings import work_dir

# The job entrypoint reads the run config and what to do with earlier state from these; it prints
# its result (or its error) on a line starting with a marker, which the launcher reads in the log.
ENTRYPOINT = "python -m dreamloom.training.entrypoint"
CONFIG_ENV = "DREAMLOOM_RUN_CONFIG"
RESUME_ENV = "DREAMLOOM_RESUME"
RESULT_MARKER = "dreamloom-result: "
ERROR_MARKER = "dreamloom: error: "

# What rank 0's last checkpoint holds besides the training state, and how it names the seconds of
# its phases among the metrics it reports (the driver publishes the one and accounts for the other).
ARTIFACT_FOLDER = "artifact"
FINAL_SAMPLES = "samples/final.png"
WORKER_PHASE_PREFIX = "seconds_"


class TrainJob(BaseModel):
    """Everything a worker needs, resolved by the driver (paths are absolute)."""

    model_config = ConfigDict(extra="forbid")

    config: RunConfig
    base_model: BaseModelRef
    dataset_root: str
    dataset_source: str | None = None  # the originals this run was given (a cached set may name others)
    class_images: str | None = None  # generated-class-image cache folder
    class_dataset_root: str | None = None  # the user's own class images, prepared
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None

    def dataset(self) -> PreparedDataset:
        """The prepared training set, naming the folder this run was given: prepared sets are
        cached by content, so the cached copy may have been made from another folder."""
        dataset = PreparedDataset.load(Path(self.dataset_root))
        return replace(dataset, source=self.dataset_source) if self.dataset_source else dataset


@dataclass
class TrainResult:
    artifact: Path
    run_name: str
    mlflow_run_id: str
    steps: int
    resumed_from_step: int
    metrics: dict = field(default_factory=dict)


CHECKPOINTS_SUFFIX = ".checkpoints"


def run_storage(config: RunConfig) -> str:
    """Where Ray keeps the run's checkpoints (a run is resumed by its name under this folder):
    ``scaling.storage_path`` when set (a cluster's volume or bucket), else beside the output
    folder, in ``.<output>.checkpoints/``, as diffusers and kohya keep theirs with the output: two
    runs whose output folders share a name never meet, and the checkpoints go where the output goes."""
    if config.scaling.storage_path:
        return config.scaling.storage_path
    output = Path(config.output).absolute()
    return str(output.parent / f".{output.name}{CHECKPOINTS_SUFFIX}")


def check_output(output: Path) -> None:
    if not output.exists():
        return
    if (output / artifacts.MANIFEST_FILE).is_file():
        raise DreamloomError(f"{output} already holds a finished artifact; choose another --output")
    if not output.is_dir() or any(output.iterdir()):
        raise DreamloomError(f"output {output} exists and is not an empty folder; choose another --output")


def training_data(config: RunConfig, into: Path | None = None) -> PreparedDataset:
    """The run's instance images, every one checked, prepared once (with the conditions its method
    needs); ``into`` a given folder, else into the work folder's cache."""
    return prepare_training_data(config.data, config.method_type.condition(config), into)


def prepare_class_data(config: RunConfig) -> PreparedDataset | None:
    """The user's own class images for prior preservation, checked and prepared (None when generated)."""
    if not (config.prior_enabled and config.prior.class_data):
        return None
    options = PrepareOptions(
        resolution=config.data.resolution,
        max_image_pixels=config.data.max_image_pixels,
        max_total_pixels=config.data.max_total_pixels,
        upscale=config.data.upscale_small_images,
    )
    folder = work_dir() / "datasets" / f"class-{config.effective_run_name}-{options.key()}"
    return prepare_dataset(config.prior.class_data, folder, options)
