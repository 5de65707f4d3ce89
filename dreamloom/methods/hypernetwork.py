"""HyperNetworks, the AUTOMATIC1111 design, on diffusers.

For each cross-attention context width (768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL) a pair of
small residual MLPs transforms the text context before the attention's key and value
projections: ``k = to_k(x + mlp_k(x) * strength)``, likewise for ``v``. The same pair serves
every cross-attention layer of that width. The MLPs are laid out exactly as A1111's
``HypernetworkModule`` (a ``linear`` Sequential), so A1111 files map onto them key for key.

They are applied through diffusers attention processors: a processor hands the original one a
view of the attention module whose ``to_k``/``to_v`` first pass the context through the MLPs,
so every other step of the attention stays the library's own (and strength 0 is the base).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator
from safetensors.torch import load_file, save_file

from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.methods.base import AttentionPatch, ServedAdapter, Suitability, TrainingMethod, section
from dreamloom.models.base import LoadedBaseModel
from dreamloom.schema import Section

WEIGHTS_FILE = "hypernetwork.safetensors"
# A1111's activation names; note that its "swish" is torch's Hardswish.
ACTIVATIONS = {
    "linear": None,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "gelu": torch.nn.GELU,
    "mish": torch.nn.Mish,
}


class HypernetworkSettings(Section):
    layer_structure: list[float] = Field(
        default_factory=lambda: [1.0, 2.0, 1.0],
        min_length=2,
        description="Widths of the residual MLP as multiples of the context width (A1111's 1, 2, 1)",
    )
    activation: Literal["linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "gelu", "mish"] = Field(
        "linear", description="Activation between the MLP's layers (A1111's names)"
    )
    layer_norm: bool = Field(False, description="A LayerNorm after each layer (A1111's is_layer_norm)")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after hidden layers (A1111's use_dropout)")
    strength: float = Field(1.0, ge=0, le=2, description="Multiplier of the MLP output when generating")

    @field_validator("layer_structure")
    @classmethod
    def _ends_at_one(cls, structure: list[float]) -> list[float]:
        if structure[0] != 1 or structure[-1] != 1 or any(width <= 0 for width in structure):
            raise ValueError("must start and end with 1 and hold positive widths, e.g. [1, 2, 1]")
        return structure


class HypernetworkMLP(torch.nn.Module):
    """One residual MLP over a context of width ``dim``: ``x + linear(x) * strength``."""

    def __init__(
        self,
        dim: int,
        layer_structure: list[float],
        activation: str = "linear",
        layer_norm: bool = False,
        dropout_structure: list[float] | None = None,
        activate_output: bool = False,
        last_layer_dropout: bool = False,
    ):
        super().__init__()
        layers: list[torch.nn.Module] = []
        depth = len(layer_structure)
        dropout_structure = dropout_structure or [0.0] * depth
        for i in range(depth - 1):
            width = int(dim * layer_structure[i + 1])
            layers.append(torch.nn.Linear(int(dim * layer_structure[i]), width))
            is_output = i >= depth - 2
            if ACTIVATIONS[activation] is not None and (activate_output or not is_output):
                layers.append(ACTIVATIONS[activation]())
            if layer_norm:
                layers.append(torch.nn.LayerNorm(width))
            if dropout_structure[i + 1] > 0 and (i < depth - 3 or (last_layer_dropout and not is_output)):
                layers.append(torch.nn.Dropout(p=dropout_structure[i + 1]))
        self.linear = torch.nn.Sequential(*layers)
        self.strength = 1.0
        for layer in self.linear:
            if isinstance(layer, torch.nn.Linear):  # A1111's "Normal" initialisation
                torch.nn.init.normal_(layer.weight, mean=0.0, std=0.01)
                torch.nn.init.zeros_(layer.bias)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        strength = 1.0 if self.training else self.strength
        return context + self.linear(context) * strength


class Hypernetwork(torch.nn.Module, AttentionPatch):
    """A (key, value) pair of MLPs for each context width."""

    def __init__(self, widths: list[int], **structure):
        super().__init__()
        self.structure = structure
        self.pairs = torch.nn.ModuleDict(
            {
                str(w): torch.nn.ModuleList([HypernetworkMLP(w, **structure), HypernetworkMLP(w, **structure)])
                for w in widths
            }
        )

    def pair_for(self, width: int):
        try:
            return self.pairs[str(width)]
        except KeyError:
            return None

    def set_strength(self, strength: float) -> None:
        for pair in self.pairs.values():
            for mlp in pair:
                mlp.strength = strength

    @property
    def widths(self) -> list[int]:
        return [int(w) for w in self.pairs]

    def install(self, unet, strength: float) -> None:
        self.set_strength(strength)
        install(unet, self)

    def remove(self, unet) -> None:
        uninstall(unet)


class _ContextProjections:
    """The attention module as its processor sees it, with the context transformed before K and V."""

    def __init__(self, attention, key_mlp, value_mlp):
        self._attention, self._key_mlp, self._value_mlp = attention, key_mlp, value_mlp

    def __getattr__(self, name):
        return getattr(self._attention, name)

    def to_k(self, context):
        return self._attention.to_k(self._key_mlp(context))

    def to_v(self, context):
        return self._attention.to_v(self._value_mlp(context))


class HypernetworkAttnProcessor:
    """Runs the original processor; cross-attention of a known width sees transformed K/V inputs."""

    def __init__(self, original, hypernetwork: Hypernetwork):
        self.original, self.hypernetwork = original, hypernetwork

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        pair = None if encoder_hidden_states is None else self.hypernetwork.pair_for(encoder_hidden_states.shape[-1])
        if pair is not None:
            attn = _ContextProjections(attn, pair[0], pair[1])
        return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def install(unet, hypernetwork: Hypernetwork) -> None:
    """Route the UNet's cross-attention layers through the hypernetwork."""
    processors = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, HypernetworkAttnProcessor):
            processor = processor.original
        is_cross_attention = name.endswith("attn2.processor")
        processors[name] = HypernetworkAttnProcessor(processor, hypernetwork) if is_cross_attention else processor
    unet.set_attn_processor(processors)


def cross_attention_widths(unet) -> list[int]:
    widths = {module.to_k.in_features for name, module in unet.named_modules() if name.endswith("attn2")}
    return sorted(widths)


class HypernetworkedUNet(torch.nn.Module):
    """The UNet and its hypernetwork as one module, so DDP sees the hypernetwork's parameters."""

    def __init__(self, unet, hypernetwork: Hypernetwork):
        super().__init__()
        self.unet, self.hypernetwork = unet, hypernetwork

    def forward(self, *args, **kwargs):
        return self.unet(*args, **kwargs)


class HypernetworkMethod(TrainingMethod):
    name = "hypernetwork"
    summary = "A1111's residual MLPs on the cross-attention context (hypernetwork.*)"
    mixes_per_sample = False  # its attention patch acts on the whole batch
    artifact_kind = "hypernetwork"
    artifact_files = (WEIGHTS_FILE,)
    sections = {"hypernetwork": HypernetworkSettings}
    has_strength = True
    fallback = "lora"

    def __init__(self, config):
        super().__init__(config)
        self.hypernetwork: Hypernetwork | None = None

    @classmethod
    def trainable_params(cls, arch, config) -> int:
        from dreamloom.models.meta import empty_weights

        with empty_weights():
            hypernetwork = Hypernetwork(
                cross_attention_widths(arch.unet()), **structure_from_settings(config.hypernetwork)
            )
        return sum(p.numel() for p in hypernetwork.parameters())

    @classmethod
    def evaluation_kind(cls, config):
        return "style"

    @classmethod
    def default_strength(cls, config) -> float:
        return section(config, "hypernetwork", HypernetworkSettings).strength

    @classmethod
    def suitability(cls, needs) -> Suitability | None:
        if needs.style and not needs.fine_detail:
            return Suitability(
                90,
                [
                    "a style applies everywhere: a hypernetwork transforms every cross-attention",
                    "its strength is adjustable when generating; a LoRA is the alternative for sharper styles",
                ],
            )
        return None

    def attach(self, model: LoadedBaseModel) -> None:
        self.hypernetwork = Hypernetwork(
            cross_attention_widths(model.unet), **structure_from_settings(self.config.hypernetwork)
        )
        self.hypernetwork.to(model.device)
        install(model.unet, self.hypernetwork)

    def trained_modules(self, model: LoadedBaseModel) -> dict[str, torch.nn.Module]:
        return {"hypernetwork": self.hypernetwork}

    def denoiser(self, model: LoadedBaseModel) -> torch.nn.Module:
        return HypernetworkedUNet(model.unet, self.hypernetwork)

    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        return [{"params": list(self.hypernetwork.parameters())}]

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        save_hypernetwork(self.hypernetwork, folder)

    @classmethod
    def load_into(cls, pipe, folder: Path, config=None, strength: float = 1.0):
        hypernetwork = cls._loaded(pipe, Path(folder))
        hypernetwork.install(pipe.unet, strength)
        pipe.hypernetwork = hypernetwork  # keeps a handle for changing the strength later
        return pipe

    @classmethod
    def serve(cls, pipe, folder: Path, config, key: str) -> ServedAdapter:
        return ServedAdapter(key, cls.name, attention_patch=cls._loaded(pipe, Path(folder)))

    @classmethod
    def _loaded(cls, pipe, folder: Path) -> Hypernetwork:
        hypernetwork = load_hypernetwork(folder).to(pipe.device, pipe.unet.dtype)
        widths = cross_attention_widths(pipe.unet)
        if not set(hypernetwork.widths) & set(widths):
            raise DreamloomError(
                f"this hypernetwork transforms contexts of width {hypernetwork.widths}, but the base model's "
                f"cross-attention uses {widths}: it was made for another base"
            )
        return hypernetwork.eval()


def structure_from_settings(settings) -> dict:
    depth = len(settings.layer_structure)
    dropout = [0.0] + [settings.dropout] * (depth - 2) + [0.0]
    return {
        "layer_structure": list(settings.layer_structure),
        "activation": settings.activation,
        "layer_norm": settings.layer_norm,
        "dropout_structure": dropout,
    }


def save_hypernetwork(hypernetwork: Hypernetwork, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().float().cpu().contiguous() for name, tensor in hypernetwork.state_dict().items()}
    metadata = {"structure": json.dumps(hypernetwork.structure), "widths": json.dumps(hypernetwork.widths)}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata=metadata)
    return folder / WEIGHTS_FILE


def load_hypernetwork(folder: Path) -> Hypernetwork:
    from safetensors import safe_open

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} lacks {WEIGHTS_FILE}: it is not a complete artifact")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    hypernetwork = Hypernetwork(json.loads(metadata["widths"]), **json.loads(metadata["structure"]))
    hypernetwork.load_state_dict(load_file(str(path)))
    return hypernetwork


def read_a1111(source: Path) -> tuple[Hypernetwork, int]:
    """An A1111 ``.pt`` hypernetwork and its step count, read with ``torch.load(weights_only=True)``
    (no code can run)."""
    try:
        saved = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals come in several types
        raise DreamloomError(f"{source} is not a plain A1111 hypernetwork file (refused to unpickle: {exc})") from None
    widths = sorted(key for key in saved if isinstance(key, int))
    if not widths:
        raise DreamloomError(f"{source} holds no hypernetwork layers (no integer width keys)")
    structure = {
        "layer_structure": [float(w) for w in saved.get("layer_structure", [1, 2, 1])],
        "activation": saved.get("activation_func") or "linear",
        "layer_norm": bool(saved.get("is_layer_norm", False)),
        "dropout_structure": [float(p) for p in saved.get("dropout_structure") or []] or None,
        "activate_output": bool(saved.get("activate_output", False)),
        "last_layer_dropout": bool(saved.get("last_layer_dropout", False)),
    }
    if structure["activation"] not in ACTIVATIONS:
        raise DreamloomError(
            f"{source} uses activation {structure['activation']!r}; supported: {', '.join(ACTIVATIONS)}"
        )
    if not saved.get("use_dropout", False):
        structure["dropout_structure"] = None
    hypernetwork = Hypernetwork(widths, **structure)
    state = {}
    for width in widths:
        for index, module_state in enumerate(saved[width]):
            state.update({f"pairs.{width}.{index}.{key}": value for key, value in module_state.items()})
    try:
        hypernetwork.load_state_dict(state)
    except RuntimeError as exc:
        raise DreamloomError(f"{source} does not match its own layer description: {str(exc).splitlines()[0]}") from None
    return hypernetwork, int(saved.get("step", 0) or 0)


def uninstall(unet) -> None:
    """Give the UNet's cross-attention layers their original processors back."""
    processors = unet.attn_processors
    if any(isinstance(p, HypernetworkAttnProcessor) for p in processors.values()):
        unet.set_attn_processor(
            {n: p.original if isinstance(p, HypernetworkAttnProcessor) else p for n, p in processors.items()}
        )
