"""The run configuration: one YAML document that the CLI, the pipeline and a RayJob all accept.

It holds the sections every method shares (data, training, optimizer, prior, validation,
scaling; documented here) and each method's own sections (``lora``, ``textual_inversion``, ...;
documented in that method's module), assembled from the method registry. It is validated once,
at the edge, before any data is read or any model is loaded; every other module receives a
``RunConfig`` (or one of its sections), never a raw dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from dreamloom.errors import ConfigError
from dreamloom.methods import METHODS, TrainingMethod, config_sections, get_method
from dreamloom.schema import Section

MethodName = Literal[tuple(METHODS)]
LR_SCHEDULERS = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]


class DataSettings(Section):
    path: Path = Field(description="Folder of instance images (jpg/png/webp), captions as name.txt")
    instance_prompt: str = Field(
        min_length=1, description="Prompt for images without a caption, e.g. 'a photo of sks shoe'"
    )
    trigger_token: str | None = Field(
        None, description="The rare token that names the concept (recorded in the manifest)"
    )
    resolution: int = Field(512, ge=32, le=4096, description="Training resolution in pixels")
    bucketing: bool = Field(False, description="Aspect-ratio buckets instead of center crops")
    bucket_step: int | None = Field(
        None, ge=8, description="Bucket side granularity in pixels (default resolution/8, >= 8)"
    )
    random_flip: bool = Field(False, description="Horizontally flip half of the samples")
    max_image_pixels: int = Field(50_000_000, ge=1, description="Refuse images with more pixels (decompression bombs)")
    upscale_small_images: bool = Field(
        True, description="Upscale images smaller than the resolution, with a warning; false refuses them"
    )
    max_total_pixels: int = Field(
        50_000_000_000, ge=1, description="Refuse folders whose images add up to more pixels (read from headers first)"
    )

    @field_validator("resolution")
    @classmethod
    def _resolution_fits_latents(cls, resolution: int) -> int:
        if resolution % 8:
            raise ValueError("must be a multiple of 8 (the VAE works on 8-pixel blocks)")
        return resolution


class PriorSettings(Section):
    enabled: bool | None = Field(None, description="Prior preservation (default: on for dreambooth*, off for lora)")
    class_prompt: str | None = Field(None, description="e.g. 'a photo of a shoe'")
    class_data: Path | None = Field(None, description="Own class images instead of generated ones")
    num_class_images: int = Field(100, ge=1, le=10_000)
    weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the prior loss")
    generation_steps: int = Field(25, ge=1, le=200)
    generation_guidance: float = Field(7.5, ge=0.0, le=50.0)


class OptimizerSettings(Section):
    name: Literal["adamw", "adafactor"] = Field(
        "adamw",
        description=(
            "adamw: two fp32 moments per trained weight (16 bytes each with the weight and its gradient); "
            "adafactor: factored second moments, no first (about 9 bytes), what a whole SDXL UNet or "
            "ControlNet needs to train in 24 GB (kohya's choice for SDXL fine-tuning; a fixed learning rate)"
        ),
    )
    learning_rate: float = Field(
        1e-4, gt=0, le=1, description="Step size (LoRA-like adapters ~1e-4 to 1e-3; a whole UNet ~1e-6 to 5e-6)"
    )
    lr_scheduler: LR_SCHEDULERS = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    lr_num_cycles: int = Field(1, ge=1)
    lr_power: float = Field(1.0, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    scale_lr: bool = Field(False, description="Multiply the learning rate by batch size x accumulation x workers")


class TrainingSettings(Section):
    steps: int = Field(500, ge=1, le=10_000_000, description="Optimizer steps")
    batch_size: int = Field(1, ge=1, le=1024, description="Images per worker per micro-step")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    seed: int = Field(0, ge=0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16 (or fp16) on GPUs; bf16 on CPUs with AMX or AVX512-BF16; fp32 on other CPUs"
    )
    gradient_checkpointing: bool = False
    cache_latents: bool = Field(True, description="Encode each image with the VAE once")
    cache_text_embeddings: bool = Field(
        True, description="Encode each caption once (only when the text encoder is frozen)"
    )
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR weighting gamma, e.g. 5.0")
    noise_offset: float = Field(0.0, ge=0, le=1)
    checkpoint_every: int = Field(100, ge=0, description="Steps between checkpoints (0: only end)")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1, description="Steps between logged metrics")
    channels_last: bool = Field(False, description="Run the UNet in channels-last memory format")
    compile: bool = Field(False, description="torch.compile the UNet (slow start, faster steps)")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no_is_a_string(cls, value):
        return "no" if value is False else value  # YAML reads a bare `no` (here and in --set) as false


class ValidationSettings(Section):
    prompts: list[str] = Field(default_factory=list, description="Prompts for sample grids (default: instance prompt)")
    every: int = Field(0, ge=0, description="Steps between sample grids (0: only at the end)")
    final_grid: bool = Field(True, description="Render a sample grid when training ends (off: end at the artifact)")
    images_per_prompt: int | None = Field(
        None, ge=1, le=16, description="Images per prompt (default: sized for the hardware, see steps)"
    )
    steps: int | None = Field(
        None,
        ge=1,
        le=200,
        description="Denoising steps per image (default: 25 steps x 2 images, or 10 x 1 for a real-size UNet on a CPU)",
    )
    guidance: float = Field(7.5, ge=0, le=50)
    seed: int = Field(0, ge=0)


class ScalingSettings(Section):
    workers: int = Field(1, ge=1, le=1024, description="Ray Train workers (DDP ranks)")
    gpus_per_worker: float = Field(0, ge=0, le=8, description="0 trains on CPU")
    cpus_per_worker: int | None = Field(
        None,
        ge=1,
        le=256,
        description="CPU cores (and torch threads) per worker (default: on this machine's Ray, its cores shared "
        "among the workers; on a cluster, 1)",
    )
    max_failures: int = Field(1, ge=-1, description="Worker failures to recover from (-1: unlimited)")
    storage_path: str | None = Field(
        None, description="Ray run storage (default: the work folder; shared storage on clusters)"
    )


class _SharedSections(Section):
    """The run config without the method sections (RunConfig below adds them from the registry)."""

    method: str = Field(description="How the concept is taught")
    base_model: str = Field(
        "tiny",
        min_length=1,
        description="Hub id, local diffusers folder, tiny, tiny-sdxl, or a real architecture with random weights "
        "(sd15-random, sd21-random, sdxl-random)",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    data: DataSettings
    output: Path = Field(description="Folder the final artifact is written to")
    run_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="Default: output's name"
    )
    experiment: str = Field("dreamloom", min_length=1, description="MLflow experiment")
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    prior: PriorSettings = Field(default_factory=PriorSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)

    @model_validator(mode="after")
    def _prior_needs_a_class(self):
        if self.prior_enabled and not (self.prior.class_prompt or self.prior.class_data):
            raise ValueError(
                f"method {self.method!r} uses prior preservation, which needs prior.class_prompt "
                "(e.g. --class-prompt 'a photo of a shoe') or prior.class_data; "
                "or set prior.enabled=false"
            )
        return self

    @model_validator(mode="after")
    def _the_method_accepts_its_settings(self):
        self.method_type.check_config(self)
        return self

    @property
    def method_type(self) -> type[TrainingMethod]:
        """The method plug-in this run trains with (``dreamloom.methods``)."""
        return get_method(self.method)

    @property
    def prior_enabled(self) -> bool:
        if self.prior.enabled is not None:
            return self.prior.enabled
        return self.method_type.prior_by_default

    @property
    def effective_run_name(self) -> str:
        return self.run_name or self.output.absolute().name

    @property
    def validation_prompts(self) -> list[str]:
        return self.validation.prompts or [self.data.instance_prompt]


RunConfig = create_model(
    "RunConfig",
    __base__=_SharedSections,
    __module__=__name__,
    __doc__="A training run: the shared sections above plus every method's own section.",
    method=(MethodName, Field(description="How the concept is taught: " + ", ".join(METHODS))),
    **{
        name: (model, Field(default_factory=model, description=(model.__doc__ or "").strip() or None))
        for name, model in config_sections().items()
    },
)


# CLI flags that are shortcuts for config fields (each method adds its own).
FLAG_FIELDS = {
    "method": "method",
    "base_model": "base_model",
    "revision": "revision",
    "data": "data.path",
    "instance_prompt": "data.instance_prompt",
    "class_prompt": "prior.class_prompt",
    "resolution": "data.resolution",
    "steps": "training.steps",
    "batch_size": "training.batch_size",
    "workers": "scaling.workers",
    "gpus_per_worker": "scaling.gpus_per_worker",
    "output": "output",
    "run_name": "run_name",
    **{flag: spec.field for method in METHODS.values() for flag, spec in method.flags.items()},
}


def load_run_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (optional), apply dotted overrides, validate."""
    document: dict[str, Any] = {}
    if path is not None:
        document = _read_yaml(Path(path))
    for dotted, value in (overrides or {}).items():
        _set_dotted(document, dotted, value)
    return validate_run_config(document, source=str(path) if path else "command line")


def validate_run_config(document: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. lora.rank=8), got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def dump_run_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a mapping of fields, not {type(document).__name__}")
    return document


def _set_dotted(document: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = document
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
        node = child
    node[leaf] = value


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid run configuration ({source}):"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown field; known fields here: {', '.join(_known_fields(error['loc']))}"
        elif error["type"] == "missing":
            message = "required field is missing"
        got = error.get("input")
        if error["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict):
            message += f" (got {got!r})"
        lines.append(f"  - {field}: {message}")
    return "\n".join(lines)


def _known_fields(location: tuple) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in location[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return sorted(model.model_fields)


def pipeline_run_config(document: dict[str, Any], output: str, prepared_data: str | None = None) -> RunConfig:
    """The run config of a pipeline step: the pipeline, not the user, chooses the output folder,
    and a step after prepare-data trains on its prepared set (``prepared_data``), not the originals."""
    if document.get("output"):
        raise ConfigError("a pipeline chooses where the artifact goes: remove `output` from the config")
    if prepared_data is not None:
        document = {**document, "data": {**(document.get("data") or {}), "path": prepared_data}}
    return validate_run_config({**document, "output": output}, "pipeline config")
