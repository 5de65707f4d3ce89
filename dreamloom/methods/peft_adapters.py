"""What every peft adapter method shares (LoRA, LoHa, LoKr): the settings, attaching the adapter
to the UNet (and optionally the text encoders) for training, counting it on an architecture, and
saving, loading, serving and converting its weights.

A peft-adapter artifact that is not a diffusers LoRA is one safetensors file: the adapter's state
dict keyed ``<component>.<module>.<parameter>`` (``unet.down_blocks...to_q.hada_w1_a``) and, in its
metadata, the peft config of each component as JSON, so that loading rebuilds exactly the layers
that trained. Only the peft types the method names are accepted back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import Field
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamloom.errors import ArtifactError
from dreamloom.methods import kohya
from dreamloom.methods.base import ServedAdapter, TrainingMethod, adapter_name
from dreamloom.methods.peft_layers import component_modules
from dreamloom.models.base import LoadedBaseModel
from dreamloom.schema import Section

if TYPE_CHECKING:
    from dreamloom.config import RunConfig

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]
TRAINED = "default"  # the adapter name while training


class AdapterSettings(Section):
    rank: int = Field(4, ge=1, le=1024, description="Rank r of the adapter's factors")
    alpha: float | None = Field(None, gt=0, description="Alpha: the update is scaled by alpha / rank (default: rank)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's path while training")
    target_modules: list[str] = Field(
        default_factory=lambda: list(ATTENTION), min_length=1, description="UNet module names that get the adapter"
    )
    train_text_encoder: bool = Field(False, description="Also train the adapter on the text encoder(s)")
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: list(TEXT_ATTENTION), min_length=1, description="Text-encoder modules that get it"
    )
    text_encoder_learning_rate: float | None = Field(
        None, gt=0, le=1, description="Learning rate of the text-encoder adapter (default: optimizer.learning_rate)"
    )

    @property
    def effective_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)


class PeftAdapterMethod(TrainingMethod):
    """A method whose artifact is a peft adapter of the UNet (and optionally the text encoders)."""

    section_name: ClassVar[str]
    settings_model: ClassVar[type[AdapterSettings]]
    weights_file: ClassVar[str]
    peft_types: ClassVar[tuple[str, ...]]  # the peft types its files may hold
    has_strength = True
    fallback = "textual-inversion"

    @classmethod
    def peft_config(cls, settings: AdapterSettings, targets: list[str]):
        """The peft config of the adapter on modules named ``targets``."""
        raise NotImplementedError

    @property
    def settings(self) -> AdapterSettings:
        return getattr(self.config, self.section_name)

    @classmethod
    def trains_text_encoders(cls, config: RunConfig) -> bool:
        return getattr(config, cls.section_name).train_text_encoder

    # ----- training -----

    def attach(self, model: LoadedBaseModel) -> None:
        from diffusers.training_utils import cast_training_params

        settings = self.settings
        model.unet.add_adapter(self.peft_config(settings, settings.target_modules))
        if self.trains_text_encoder:
            for encoder in model.text_encoders:
                encoder.add_adapter(self.peft_config(settings, settings.text_encoder_target_modules))
        cast_training_params(list(self.trained_modules(model).values()))

    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        groups = [{"params": [p for p in model.unet.parameters() if p.requires_grad]}]
        if self.trains_text_encoder:
            text_params = [p for te in model.text_encoders for p in te.parameters() if p.requires_grad]
            lr = self.settings.text_encoder_learning_rate or self.config.optimizer.learning_rate
            groups.append({"params": text_params, "lr": lr})
        return groups

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        save_peft_file(folder / self.weights_file, component_modules(model, self.trains_text_encoder), TRAINED)

    # ----- planning -----

    @classmethod
    def trainable_params(cls, arch, config: RunConfig) -> int:
        from dreamloom.models.meta import empty_weights

        settings = getattr(config, cls.section_name)
        modules = [(arch.unet(), settings.target_modules)]
        if settings.train_text_encoder:
            modules += [(encoder, settings.text_encoder_target_modules) for encoder in arch.text_encoders()]
        total = 0
        for module, targets in modules:
            module.requires_grad_(False)
            with empty_weights():
                module.add_adapter(cls.peft_config(settings, targets))
            total += sum(p.numel() for p in module.parameters() if p.requires_grad)
        return total

    # ----- using an artifact -----

    @classmethod
    def load_into(cls, pipe, folder: Path, config: RunConfig | None, strength: float = 1.0):
        name = "dreamloom"
        cls._load_weights(pipe, Path(folder), name)
        pipe.set_adapters([name], adapter_weights=[strength])
        return pipe

    @classmethod
    def serve(cls, pipe, folder: Path, config: RunConfig | None, key: str) -> ServedAdapter:
        name = adapter_name(key)
        cls._load_weights(pipe, Path(folder), name)
        return ServedAdapter(key, cls.name, peft_adapters=[name])

    @classmethod
    def _load_weights(cls, pipe, folder: Path, name: str) -> None:
        load_peft_file(folder / cls.weights_file, component_modules(pipe), name, cls.peft_types)

    # ----- kohya / A1111 files -----

    kohya_names: ClassVar[dict[str, str]] = {}  # peft parameter name -> kohya name, where they differ

    @classmethod
    def export_kohya(cls, folder: Path, config: RunConfig | None, sdxl: bool):
        tensors, configs = read_peft_file(Path(folder) / cls.weights_file, cls.peft_types)
        converted: dict[str, torch.Tensor] = {}
        for module_key, parameters in group_by_module(tensors).items():
            component, module = module_key.split(".", 1)
            rank, alpha = layer_rank_and_alpha(configs[component], module)
            kohya_module = kohya.module_name(component, module, sdxl)
            for name, tensor in cls.to_kohya(parameters, rank, alpha).items():
                converted[f"{kohya_module}.{name}"] = tensor
        return converted, kohya.file_metadata(sdxl, cls.name)

    @classmethod
    def to_kohya(cls, parameters: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, torch.Tensor]:
        """One module's tensors in kohya's names, with its ``alpha``."""
        named = {cls.kohya_names.get(name, name): tensor for name, tensor in parameters.items()}
        return {**named, "alpha": torch.tensor(float(alpha))}

    kohya_parameters: ClassVar[tuple[str, ...]] = ()  # kohya tensor names that only this method writes

    @classmethod
    def reads_kohya(cls, keys: set[str]) -> bool:
        return any(key.split(".", 1)[-1] in cls.kohya_parameters for key in keys)

    @classmethod
    def import_kohya(cls, tensors, metadata, model: LoadedBaseModel, staging: Path) -> None:
        index = kohya.module_index(model)
        by_component: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
        for kohya_module, parameters in kohya.group(tensors).items():
            if kohya_module not in index:
                raise ArtifactError(
                    f"{kohya_module} names no module of {model.ref.spec}: the file was made for another base "
                    "(or uses SGM block names, which dreamloom does not import)"
                )
            component, module = index[kohya_module]
            by_component.setdefault(component, {})[module] = parameters
        modules = component_modules(model)
        for component, layers in by_component.items():
            config, state = cls.from_kohya(layers, modules[component])
            modules[component].add_adapter(config, adapter_name=TRAINED)
            _set_state(modules[component], state, TRAINED, f"{component} of the imported file")
        save_peft_file(staging / cls.weights_file, {c: modules[c] for c in by_component}, TRAINED)

    @classmethod
    def from_kohya(cls, layers: dict[str, dict[str, torch.Tensor]], component: torch.nn.Module):
        """The peft config and state dict (``<module>.<parameter>``) for one component's kohya tensors."""
        raise NotImplementedError


# ----- the peft-adapter file -----


def save_peft_file(path: Path, modules: dict[str, torch.nn.Module], adapter: str) -> None:
    from peft.utils import get_peft_model_state_dict

    tensors, metadata = {}, {}
    for component, module in modules.items():
        state = get_peft_model_state_dict(module, adapter_name=adapter)
        for key, tensor in state.items():
            tensors[f"{component}.{key}"] = tensor.detach().float().cpu().contiguous()
        metadata[f"{component}_peft_config"] = json.dumps(_jsonable(module.peft_config[adapter].to_dict()))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def read_peft_file(path: Path, peft_types: tuple[str, ...]):
    """The tensors and {component: peft config} of a peft-adapter file; other peft types are refused."""
    from peft import PeftConfig

    if not path.is_file():
        raise ArtifactError(f"{path.parent} lacks {path.name}: it is not a complete artifact")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    configs = {}
    for key, text in metadata.items():
        if not key.endswith("_peft_config"):
            continue
        document = json.loads(text)
        if str(document.get("peft_type")) not in peft_types:
            raise ArtifactError(f"{path.name} holds a {document.get('peft_type')} adapter, not {'/'.join(peft_types)}")
        configs[key.removesuffix("_peft_config")] = PeftConfig.from_peft_type(**document)
    if not configs:
        raise ArtifactError(f"{path.name} has no adapter configuration in its metadata")
    return load_file(str(path)), configs


def load_peft_file(path: Path, modules: dict[str, torch.nn.Module], name: str, peft_types: tuple[str, ...]) -> None:
    """Add the file's adapter to each component it has weights for, as adapter ``name``."""
    tensors, configs = read_peft_file(path, peft_types)
    for component, config in configs.items():
        if component not in modules:
            raise ArtifactError(f"{path.name} adapts a {component} that this base model does not have")
        prefix = f"{component}."
        state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        module = modules[component]
        module.add_adapter(config, adapter_name=name)
        _set_state(module, state, name, f"{path.name} ({component})")
        module.requires_grad_(False)  # served and evaluated, never trained


def _set_state(module, state: dict[str, torch.Tensor], name: str, what: str) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(module, state, adapter_name=name)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ArtifactError(f"{what} has tensors this base has no place for (e.g. {unexpected[0]})")


def group_by_module(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``component.module.parameter`` keys -> {"component.module": {parameter: tensor}}."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, parameter = key.rsplit(".", 1)
        grouped.setdefault(module, {})[parameter] = tensor
    return grouped


def layer_rank_and_alpha(config, module: str) -> tuple[int, float]:
    """The rank and alpha peft gives ``module`` (patterns first, then the config's own)."""
    from peft.utils.other import get_pattern_key

    rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
    alpha_default = getattr(config, "alpha", None) or getattr(config, "lora_alpha", rank)
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), alpha_default)
    return int(rank), float(alpha)


def exact_patterns(values: dict[str, float]) -> dict[str, float]:
    """peft rank/alpha patterns that match exactly these module paths (peft anchors them at the end)."""
    return {re.escape(path): value for path, value in values.items()}


def _jsonable(document: dict) -> dict:
    return {key: sorted(value) if isinstance(value, set) else value for key, value in document.items()}
