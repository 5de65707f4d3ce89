"""What a method is: a plug-in to the one training loop, and the one place that knows its method.

A method declares everything the platform asks of it, in four groups:

- **what it is**: its name and summary, the config sections it owns (pydantic models with help
  texts), whether prior preservation is on by default, the tokens it learns, whether it trains
  the text encoders, the data it needs (a condition image per example), its artifact files;
- **training**: what to make trainable, which module predicts the noise (the "denoiser": the
  UNet, or the UNet with a ControlNet or a hypernetwork around it), which captions an example
  trains with, how its artifact is saved;
- **using an artifact**: how it loads into a pipeline (inference, evaluation, the registry's
  pyfunc), how it attaches to and detaches from a *served* pipeline shared with other adapters
  (``serve``), how it converts to and from the files other tools read (kohya/A1111);
- **planning**: its trainable-parameter count on an architecture (sizing, the advisor), which
  evaluation fits it, when the advisor should recommend it.

The loop owns everything else (data, Ray, checkpoints, precision, logging, progress, sample
grids). Nothing outside ``dreamloom.methods`` branches on a method's name: it asks the method.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.models.base import BaseModelRef, LoadedBaseModel, pipeline_from_components
from dreamloom.models.meta import META_LOCK
from dreamloom.schema import Section

if TYPE_CHECKING:  # the run config and the layers above are only types here
    from dreamloom.config import RunConfig
    from dreamloom.data.prepare import PreparedDataset
    from dreamloom.training.examples import Batch, ExampleSet

EvaluationKind = Literal["object", "style", "layout"]


@dataclass(frozen=True)
class Flag:
    """A ``dreamloom train`` shortcut for one of the method's config fields."""

    field: str  # dotted config field, e.g. "textual_inversion.placeholder_token"
    help: str
    type: type = str


@dataclass(frozen=True)
class Suitability:
    """How strongly the advisor should recommend a method for a set of needs, and why.
    The highest ``priority`` wins; a method that does not fit returns None instead."""

    priority: int
    reasons: list[str]
    notes: list[str] = field(default_factory=list)


class AttentionPatch(ABC):
    """Something installed into the UNet's attention processors while it acts (a hypernetwork);
    a request can have one at a time."""

    @abstractmethod
    def install(self, unet, strength: float) -> None: ...

    @abstractmethod
    def remove(self, unet) -> None: ...


@dataclass
class ServedAdapter:
    """What one adapter put on a served pipeline that other adapters share.

    The serving cache activates adapters by these parts, whatever their method: peft adapters
    (on the UNet and text encoders) are mixed by weight with every other adapter's, private
    tokens rewrite the prompts that name the placeholder, an attention patch is installed at
    its weight, a ControlNet is handed to the ControlNet pipeline.
    """

    key: str  # "name/version"
    method: str
    peft_adapters: list[str] = field(default_factory=list)
    placeholder: str | None = None  # what prompts write, e.g. <sks-mug>
    tokens: list[str] = field(default_factory=list)  # its private tokens in the shared tokenizer
    attention_patch: AttentionPatch | None = None
    controlnet: torch.nn.Module | None = None

    def rewrite(self, prompt: str) -> str:
        """The prompt with the placeholder replaced by this adapter's private token."""
        if not self.placeholder or not self.tokens:
            return prompt
        return prompt.replace(self.placeholder, self.tokens[0])

    def detach(self, pipe) -> None:
        """Take everything this adapter added off the shared pipeline."""
        from dreamloom.methods.peft_layers import remove_peft_adapters

        remove_peft_adapters(pipe, self.peft_adapters)
        if self.tokens:
            pipe.unload_textual_inversion(self.tokens)
        if self.attention_patch is not None:
            self.attention_patch.remove(pipe.unet)


def adapter_name(key: str) -> str:
    """A peft adapter name for ``name/version`` (letters, digits and underscores only)."""
    return "a_" + key.replace("/", "_").replace(".", "_").replace("-", "_")


class TrainingMethod(ABC):
    # ----- what it is -----
    name: ClassVar[str]
    summary: ClassVar[str]  # one line: what trains (CLI help, docs)
    # What the artifact folder holds, recorded in its manifest: "lora", "unet", "embedding", ...
    artifact_kind: ClassVar[str]
    artifact_files: ClassVar[tuple[str, ...]]  # what save_artifact writes (a trailing / marks a folder)
    # Config sections the method reads: {section name: settings model}. Two methods may share a
    # section (dreambooth-lora reads lora's); the run config holds each once.
    sections: ClassVar[dict[str, type[Section]]] = {}
    flags: ClassVar[dict[str, Flag]] = {}  # dreamloom train --FLAG shortcuts into its sections
    prior_by_default: ClassVar[bool] = False
    supports_prior: ClassVar[bool] = True
    # Whether its artifact takes a strength when it is applied (LoRA scale, hypernetwork strength).
    has_strength: ClassVar[bool] = False
    # Sizing: its trainable parameters are the base's own (DreamBooth), not added beside them.
    trains_base_weights: ClassVar[bool] = False
    # Serving: its artifact replaces the whole UNet, so it is served as its own model, not an adapter.
    serves_as_model: ClassVar[bool] = False
    # Serving: requests through it batch with requests through other adapters of such methods, each
    # sample with its own (peft adapters and private tokens act per sample); an attention patch or
    # a ControlNet acts on a whole batch, so only requests naming the same one batch together.
    mixes_per_sample: ClassVar[bool] = True
    # Serving: attaching it leaves the UNet's modules as they are (new token rows only), so a
    # deployment compiled with torch.compile keeps its compiled UNet (others would recompile it).
    leaves_unet_unchanged: ClassVar[bool] = False
    # Serving: the generation mode a request through it uses (a ControlNet needs "controlnet").
    serving_mode: ClassVar[str] = "txt2img"
    # Advisor: the nearest method to recommend instead when this one is over a budget.
    fallback: ClassVar[str | None] = None

    def __init__(self, config: RunConfig):
        self.config = config

    # ----- the run config, before any compute -----

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Refuse settings that cannot work together (raise ValueError naming the fix)."""
        if config.prior_enabled and not cls.supports_prior:
            raise ValueError(f"{cls.name} has no prior preservation; set prior.enabled=false")
        token = cls.placeholder(config)
        if token is not None and token not in config.data.instance_prompt:
            raise ValueError(
                f"method {cls.name!r} learns the token {token!r}: put it in data.instance_prompt "
                f"(e.g. 'a photo of {token}') or choose it with --placeholder-token"
            )

    @classmethod
    def placeholder(cls, config: RunConfig) -> str | None:
        """The new token the method learns (prompts must name it), if it learns one."""
        return None

    @classmethod
    def trigger_token(cls, config: RunConfig) -> str | None:
        """The word that calls up the concept, recorded in the manifest."""
        return config.data.trigger_token or cls.placeholder(config)

    @classmethod
    def trains_text_encoders(cls, config: RunConfig) -> bool:
        return False

    @classmethod
    def condition(cls, config: RunConfig):
        """The condition settings when every example needs a condition image (ControlNet), else None."""
        return None

    @classmethod  # noqa: B027 (an optional hook)
    def check(cls, config: RunConfig, base: BaseModelRef, dataset: PreparedDataset) -> None:
        """Refuse what cannot work with this base or data before any compute (may read tokenizers)."""

    # ----- planning -----

    @classmethod
    @abstractmethod
    def trainable_params(cls, arch, config: RunConfig) -> int:
        """Trainable parameters on ``arch`` (a ``dreamloom.sizing.Architecture``, modules on the meta device)."""

    @classmethod
    def evaluation_kind(cls, config: RunConfig | None) -> EvaluationKind:
        """object/style: subject fidelity over prompt templates; layout: following a condition."""
        return "object"

    @classmethod
    def evaluation_inputs(cls, config: RunConfig | None, reference) -> dict:
        """Extra generation inputs an evaluation needs, derived from a reference image."""
        return {}

    @classmethod
    def suitability(cls, needs) -> Suitability | None:
        """When the advisor should recommend this method (``needs``: ``dreamloom.advisor.Needs``)."""
        return None

    # ----- training -----

    @property
    def trains_text_encoder(self) -> bool:
        return self.trains_text_encoders(self.config)

    def captions_for(self, caption: str | None) -> list[str]:
        """The captions an example trains with (one is drawn per step); its own caption by default."""
        return [caption or self.config.data.instance_prompt]

    @abstractmethod
    def attach(self, model: LoadedBaseModel) -> None:
        """Make the method's parameters trainable (and add any new modules) on a frozen base."""

    @abstractmethod
    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        """Optimizer parameter groups (each a dict with ``params`` and optionally ``lr``)."""

    def trained_modules(self, model: LoadedBaseModel) -> dict[str, torch.nn.Module]:
        """Modules holding trainable parameters, by stable names (checkpoints, train/eval mode)."""
        modules = {"unet": model.unet}
        if self.trains_text_encoder:
            modules.update({f"text_encoder_{i}": te for i, te in enumerate(model.text_encoders)})
        return modules

    def denoiser(self, model: LoadedBaseModel) -> torch.nn.Module:
        """The module whose forward predicts the noise (wrapped in DDP when it trains)."""
        return model.unet

    def predict_noise(self, denoiser, noisy_latents, timesteps, conditioning: dict, batch: Batch) -> torch.Tensor:
        return denoiser(noisy_latents, timesteps, **conditioning).sample

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:  # noqa: B027 (an optional hook)
        """Adjust the optimizer before optimizer step ``step`` (pivotal tuning freezes its embedding)."""

    def trainable_state(self, model: LoadedBaseModel) -> dict[str, torch.Tensor]:
        """Every trainable tensor, for checkpoints."""
        state = {}
        for prefix, module in self.trained_modules(model).items():
            for name, parameter in module.named_parameters():
                if parameter.requires_grad:
                    state[f"{prefix}.{name}"] = parameter
        return state

    def load_trainable_state(self, model: LoadedBaseModel, tensors: dict[str, torch.Tensor]) -> None:
        expected = self.trainable_state(model)
        if set(tensors) != set(expected):
            missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
            raise RuntimeError(
                f"checkpoint does not match the {self.name} setup: {len(missing)} missing, "
                f"{len(unexpected)} unexpected tensors (e.g. {sorted(missing | unexpected)[:3]})"
            )
        with torch.no_grad():
            for name, parameter in expected.items():
                parameter.copy_(tensors[name])

    def sample_pipeline(self, model: LoadedBaseModel):
        """The pipeline that renders sample grids while training."""
        return pipeline_from_components(model)

    def sample_inputs(self, examples: ExampleSet) -> dict:
        """Extra ``GenerationRequest`` fields for sample grids (ControlNet: a training condition)."""
        return {}

    @abstractmethod
    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        """Write the method's weights (safetensors) into ``folder``."""

    # ----- using an artifact -----

    @classmethod
    def default_strength(cls, config: RunConfig | None) -> float:
        """The strength an artifact is applied at when the caller names none."""
        return 1.0

    @classmethod
    def default_control_scale(cls, config: RunConfig | None) -> float:
        """The conditioning scale when the caller names none (methods that follow a condition)."""
        return 1.0

    @classmethod
    def condition_from_photo(cls, config: RunConfig | None, photo):
        """The condition image this method follows, derived from a photo (edges, strokes)."""
        raise DreamloomError(f"a {cls.name} artifact follows no condition image")

    @classmethod
    @abstractmethod
    def load_into(cls, pipe, folder: Path, config: RunConfig | None, strength: float = 1.0):
        """Put a saved artifact into a pipeline of the same base; returns the pipeline to call.
        ``config`` is the run config that trained it (None for an imported artifact)."""

    @classmethod
    def serve(cls, pipe, folder: Path, config: RunConfig | None, key: str) -> ServedAdapter:
        """Attach the artifact to a served pipeline that other adapters share, under ``key``."""
        raise DreamloomError(
            f"adapter {key} is a {cls.name} model, which replaces the whole UNet: it is served as its "
            "own model; call that model instead of passing ADAPTER"
        )

    @classmethod
    def check_fit(cls, folder: Path, arch, config: RunConfig | None) -> None:
        """Refuse an artifact whose tensors do not fit ``arch`` (a ``dreamloom.sizing.Architecture``).
        By default it is loaded the way inference loads it, onto a pipeline of ``arch``'s modules on
        the meta device: every shape is checked and no base weights are read."""
        try:
            # peft patches torch while it loads onto meta modules: one thread at a time (models.meta)
            with META_LOCK, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")  # meant
                cls.load_into(arch.meta_pipeline(), Path(folder), config)
        except Exception as exc:
            raise ArtifactError(f"the {cls.name} artifact does not fit {arch.name}: {_first_line(exc)}") from None

    # ----- the files other tools read (kohya, A1111, ComfyUI) -----

    @classmethod
    def export_kohya(
        cls, folder: Path, config: RunConfig | None, sdxl: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The artifact's tensors in the kohya/A1111 key layout, and the file's metadata."""
        raise ArtifactError(f"a {cls.name} artifact has no kohya/A1111 export")

    @classmethod
    def reads_kohya(cls, keys: set[str]) -> bool:
        """Whether a kohya-format file with these tensor names holds this method's weights."""
        return False

    @classmethod
    def import_kohya(
        cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str], model: LoadedBaseModel, staging: Path
    ) -> None:
        """Write this method's artifact files into ``staging`` from a kohya-format file's tensors."""
        raise ArtifactError(f"{cls.name} cannot import kohya files")


def check_same_architecture(
    config_file: Path, base_config: dict, what: str, arch_name: str, keys: tuple[str, ...] | None = None
) -> None:
    """A saved model folder's config agrees with the base's on every setting both name (a
    DreamBooth UNet, a ControlNet copied from the UNet), or on ``keys`` (a text encoder, whose saved
    config also names its dtype and library version): else its weights belong to another base."""
    import json

    if not config_file.is_file():
        raise ArtifactError(f"the {what} artifact lacks {config_file.parent.name}/{config_file.name}")
    own = json.loads(config_file.read_text())
    compared = keys or [key for key in base_config if not key.startswith("_") and key in own and key != "sample_size"]
    differing = sorted(key for key in compared if key in base_config and own.get(key) != base_config[key])
    if differing:
        key = differing[0]
        raise ArtifactError(
            f"the {what} artifact's {config_file.parent.name} was built for another base: its {key} is "
            f"{own.get(key)}, {arch_name}'s is {base_config[key]} ({len(differing)} settings differ)"
        )


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "mismatch" in line or "missing" in line), lines[0] if lines else "")
    return f"{type(error).__name__}: {detail}"[:400]


def section(config: RunConfig | None, name: str, model: type[Section]) -> Any:
    """A method's settings from the run config that trained it, or their defaults (imported artifacts)."""
    return getattr(config, name) if config is not None else model()
