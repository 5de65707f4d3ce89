"""Sizes computed from a base model's real architecture: parameter counts, artifact sizes and the
memory a training run needs for weights, gradients and optimizer state.

The modules are built on the meta device (no memory, no weights) from the base's own configs:
the published configs of SD 1.5, SD 2.1 and SDXL ship with the package; any other base is read
from its diffusers folder. Each method counts what the real classes build on them (peft's own
adapter injection, ``ControlNetModel.from_unet``), which keeps these numbers honest when the
libraries change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError
from dreamloom.models import architectures
from dreamloom.models.meta import empty_weights

BYTES_FP32 = 4
BYTES_HALF = 2
# The parameter and its gradient are fp32; AdamW adds two fp32 moments, Adafactor factored second
# moments: a row and a column of each weight's last two dimensions, a few percent of a linear
# layer's size but two thirds of a 3x3 convolution's. Counted on the UNets: 2.13 bytes per
# parameter on SD 1.5 (convolution-heavy), 0.38 on SDXL; the larger is assumed.
BYTES_PER_TRAINABLE = {"adamw": BYTES_FP32 * 4, "adafactor": BYTES_FP32 * 2 + 2.13}


@dataclass
class Architecture:
    name: str
    family: str
    unet_config: dict
    text_configs: list[dict]
    vae_config: dict
    resolution: int

    @classmethod
    def known(cls, name: str) -> Architecture:
        entry = architectures.KNOWN[name]
        return cls(name, entry["family"], entry["unet"], entry["text_encoders"], entry["vae"], entry["resolution"])

    @classmethod
    def for_base(cls, spec: str) -> Architecture:
        """``sd15``/``sd21``/``sdxl``, one of their hub ids, or a local diffusers folder (incl. tiny)."""
        if name := architectures.known_architecture(spec):
            return cls.known(name)
        from dreamloom.models.base import resolve_base_model

        ref = resolve_base_model(spec)
        if not ref.is_local:
            raise DreamloomError(
                f"no architecture of {spec!r} on this machine; use sd15, sd21, sdxl or a local diffusers folder"
            )
        folder = Path(ref.location)
        texts = [
            json.loads((folder / f / "config.json").read_text())
            for f in ("text_encoder", "text_encoder_2")
            if (folder / f / "config.json").is_file()
        ]
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        resolution = unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
        return cls(spec, ref.family, unet, texts, vae, resolution)

    # ----- modules on the meta device -----

    def unet(self):
        with empty_weights():
            return architectures.build_unet(self.unet_config)

    def text_encoders(self) -> list[torch.nn.Module]:
        with empty_weights():
            return [architectures.build_text_encoder(config) for config in self.text_configs]

    def vae(self):
        with empty_weights():
            return architectures.build_vae(self.vae_config)

    def meta_pipeline(self):
        """A diffusers pipeline of this architecture with every module on the meta device: loading
        an artifact into it checks every tensor's shape and reads no base weights."""
        from diffusers import DDPMScheduler

        entry = {"text_encoders": self.text_configs, **architectures.KNOWN.get(self.name, {})}
        tokenizers = architectures.build_tokenizers(entry)
        encoders = self.text_encoders()
        return architectures.assemble_pipeline(
            self.family, self.unet(), self.vae(), encoders, tokenizers, DDPMScheduler()
        )

    # ----- counts -----

    @cached_property
    def unet_params(self) -> int:
        return count(self.unet())

    @cached_property
    def text_encoder_params(self) -> list[int]:
        return [count(encoder) for encoder in self.text_encoders()]

    @cached_property
    def vae_params(self) -> int:
        return count(self.vae())

    @property
    def total_params(self) -> int:
        return self.unet_params + sum(self.text_encoder_params) + self.vae_params

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def text_hidden_sizes(self) -> list[int]:
        return [config["hidden_size"] for config in self.text_configs]


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class Estimate:
    method: str
    trainable_params: int
    artifact_bytes: int
    training_state_bytes: int  # weights + gradients + optimizer state; activations come on top


def estimate(arch: Architecture, config: RunConfig) -> Estimate:
    """Artifact size and training-state memory of ``config.method`` on ``arch`` (bf16 frozen weights)."""
    method = config.method_type
    trainable = method.trainable_params(arch, config)
    artifact = trainable * BYTES_FP32
    # A method that trains the base's own weights (DreamBooth) freezes the rest; the others add
    # their parameters beside a base that stays frozen whole.
    frozen = arch.total_params - trainable if method.trains_base_weights else arch.total_params
    state = frozen * BYTES_HALF + int(trainable * BYTES_PER_TRAINABLE[config.optimizer.name])
    return Estimate(config.method, trainable, artifact, state)


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
