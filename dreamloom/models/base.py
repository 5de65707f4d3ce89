"""Resolving ``--base-model`` and loading a Stable Diffusion (1.x/2.x) or SDXL base.

``--base-model`` takes a Hugging Face hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``,
``stabilityai/stable-diffusion-2-1``, ``stabilityai/stable-diffusion-xl-base-1.0``), a local
diffusers folder, ``tiny`` / ``tiny-sdxl`` (built offline, see ``dreamloom.models.tiny``) or
``sd15-random`` / ``sd21-random`` / ``sdxl-random`` (the real architectures with random weights,
see ``dreamloom.models.random_init``).
Weights are only ever read from safetensors files (``use_safetensors=True``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from dreamloom.errors import DreamloomError
from dreamloom.models.random_init import RANDOM_BASES, ensure_random_base, is_random_weights
from dreamloom.models.tiny import TINY_KINDS, ensure_tiny

Family = Literal["sd", "sdxl"]
TOY = "toy"  # the base pretrained on the procedural toy world (dreamloom.toy)
# Its committed weights; dreamloom.toy.pretrain writes them (`make toy-base`).
TOY_BASE_FOLDER = Path(__file__).resolve().parents[1] / "toy" / "assets" / "base"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FULL_HASH_LIMIT = 64 * 2**20
_SAMPLE_BYTES = 4 * 2**20


@dataclass(frozen=True)
class BaseModelRef:
    """Which base model a run used, precisely enough to record as lineage."""

    spec: str  # what the user asked for
    location: str  # hub id or absolute folder
    revision: str | None  # hub commit, or a content fingerprint for folders
    family: Family
    random_weights: bool = False  # built from the architecture's configs, not trained: it draws noise

    @property
    def is_local(self) -> bool:
        return Path(self.location).is_dir()

    @property
    def weights(self) -> str:
        """``random`` or ``pretrained``: recorded beside the base wherever the base is recorded."""
        return "random" if self.random_weights else "pretrained"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BaseModelRef:
        known = {key: data.get(key) for key in ("spec", "location", "revision", "family")}
        return cls(**known, random_weights=bool(data.get("random_weights", False)))


def resolve_base_model(spec: str, revision: str | None = None) -> BaseModelRef:
    """Find the base model without loading it; fails fast with what to do instead."""
    if spec == TOY:
        return _toy_base()
    if spec in TINY_KINDS:
        return _folder_base(spec, ensure_tiny(spec), revision)
    if spec in RANDOM_BASES:
        return _folder_base(spec, ensure_random_base(spec), revision)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return _folder_base(spec, folder, revision)
    if not _HUB_ID.match(spec):
        raise DreamloomError(
            f"base model {spec!r} is neither a folder nor a hub id (owner/name); "
            f"use a diffusers folder, a hub id, or one of: {', '.join((*TINY_KINDS, *RANDOM_BASES))}"
        )
    index = _download_model_index(spec, revision)
    return BaseModelRef(spec, spec, _snapshot_commit(index) or revision, _family_of(index))


def _folder_base(spec: str, folder: Path, revision: str | None) -> BaseModelRef:
    index = folder / "model_index.json"
    if not index.is_file():
        raise DreamloomError(
            f"base model folder {folder} has no model_index.json: it is not a diffusers "
            "pipeline folder (save one with pipe.save_pretrained(folder))"
        )
    fingerprint = revision or _folder_fingerprint(folder)
    return BaseModelRef(spec, str(folder.absolute()), fingerprint, _family_of(index), is_random_weights(folder))


def _toy_base() -> BaseModelRef:
    folder = TOY_BASE_FOLDER
    if not (folder / "model_index.json").is_file():
        raise DreamloomError(f"the toy base model is not built ({folder} is empty); run `make toy-base`")
    return BaseModelRef(TOY, str(folder), _folder_fingerprint(folder), _family_of(folder / "model_index.json"))


def _download_model_index(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "model_index.json", revision=revision))
    except Exception as exc:  # offline, gated, missing: all end the same way for the user
        raise DreamloomError(
            f"cannot fetch base model {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). On a machine with access run "
            f"`huggingface-cli download {repo_id}` and pass the folder, or use --base-model tiny"
        ) from None


def _snapshot_commit(downloaded: Path) -> str | None:
    """Files from the hub cache live under snapshots/<commit>/: that folder name is the revision."""
    parts = downloaded.parts
    if "snapshots" in parts:
        return parts[parts.index("snapshots") + 1]
    return None


def _family_of(model_index: Path) -> Family:
    pipeline_class = json.loads(model_index.read_text()).get("_class_name", "")
    if "StableDiffusionXL" in pipeline_class:
        return "sdxl"
    if pipeline_class.startswith("StableDiffusion") and "3" not in pipeline_class:
        return "sd"
    raise DreamloomError(
        f"base model pipeline {pipeline_class!r} is not supported; dreamloom trains Stable "
        "Diffusion 1.x/2.x and SDXL bases"
    )


def _folder_fingerprint(folder: Path) -> str:
    """A content fingerprint: configs in full; weights in full up to 64 MiB, else size + head + tail."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as handle:
            if size <= _FULL_HASH_LIMIT:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_SAMPLE_BYTES))
                handle.seek(size - _SAMPLE_BYTES)
                digest.update(handle.read())
    return "sha256:" + digest.hexdigest()[:16]


@dataclass
class TextConditioning:
    """What the UNet is conditioned on for a batch of captions."""

    embeds: torch.Tensor  # (batch, tokens, cross_attention_dim)
    pooled: torch.Tensor | None = None  # SDXL only: (batch, projection_dim)

    def index(self, rows) -> TextConditioning:
        return TextConditioning(self.embeds[rows], None if self.pooled is None else self.pooled[rows])

    @staticmethod
    def cat(parts: list[TextConditioning]) -> TextConditioning:
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return TextConditioning(torch.cat([p.embeds for p in parts]), pooled)


@dataclass
class LoadedBaseModel:
    """The components of a base model, loaded for training or generation."""

    ref: BaseModelRef
    tokenizers: list
    text_encoders: list[torch.nn.Module]
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: object  # DDPMScheduler with the base's training noise schedule
    device: torch.device

    @property
    def is_sdxl(self) -> bool:
        return self.ref.family == "sdxl"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def freeze(self) -> None:
        for module in [self.vae, self.unet, *self.text_encoders]:
            module.requires_grad_(False)

    def encode_text(self, captions: list[str], text_encoders: list | None = None) -> TextConditioning:
        """CLIP embeddings as the diffusers pipelines compute them (SDXL: penultimate layers + pooled)."""
        encoders = text_encoders or self.text_encoders
        if not self.is_sdxl:
            ids = self._token_ids(self.tokenizers[0], captions)
            return TextConditioning(encoders[0](ids)[0])
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, encoders, strict=True):
            output = encoder(self._token_ids(tokenizer, captions), output_hidden_states=True)
            pooled = output[0]  # the last encoder (with projection) provides the pooled embedding
            hidden.append(output.hidden_states[-2])
        return TextConditioning(torch.cat(hidden, dim=-1), pooled)

    def _token_ids(self, tokenizer, captions: list[str]) -> torch.Tensor:
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids.to(self.device)

    def unet_conditioning(self, text: TextConditioning, time_ids: torch.Tensor | None) -> dict:
        """Keyword arguments for ``unet(...)`` beyond the noisy latents and timesteps."""
        kwargs: dict = {"encoder_hidden_states": text.embeds}
        if self.is_sdxl:
            kwargs["added_cond_kwargs"] = {"text_embeds": text.pooled, "time_ids": time_ids}
        return kwargs

    def latents_from_distribution(self, mean: torch.Tensor, std: torch.Tensor, generator=None) -> torch.Tensor:
        """Sample the VAE posterior and scale it the way the UNet was trained."""
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        latents = mean + std * noise
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) for pixels in [-1, 1]."""
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()


def load_base_model(
    ref: BaseModelRef, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedBaseModel:
    """Load each component from safetensors (hub id or folder) onto ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    device = torch.device(device)
    common = {"revision": None if ref.is_local else ref.revision}
    weights = {**common, "use_safetensors": True, "torch_dtype": dtype}
    tokenizer_folders = ["tokenizer", "tokenizer_2"] if ref.family == "sdxl" else ["tokenizer"]
    encoder_specs = [("text_encoder", CLIPTextModel)]
    if ref.family == "sdxl":
        encoder_specs.append(("text_encoder_2", CLIPTextModelWithProjection))
    try:
        tokenizers = [
            AutoTokenizer.from_pretrained(ref.location, subfolder=name, **common) for name in tokenizer_folders
        ]
        encoders = [cls.from_pretrained(ref.location, subfolder=name, **weights) for name, cls in encoder_specs]
        vae = AutoencoderKL.from_pretrained(ref.location, subfolder="vae", **weights)
        unet = UNet2DConditionModel.from_pretrained(ref.location, subfolder="unet", **weights)
        scheduler = DDPMScheduler.from_pretrained(ref.location, subfolder="scheduler", **common)
    except OSError as exc:
        raise DreamloomError(
            f"cannot load base model {ref.spec!r} from {ref.location}: {str(exc).splitlines()[0]} "
            "(dreamloom loads safetensors weights only; convert .bin/.ckpt files first)"
        ) from None
    model = LoadedBaseModel(ref, tokenizers, encoders, vae, unet, scheduler, device)
    for module in [vae, unet, *encoders]:
        module.to(device)
        module.eval()
    model.freeze()
    return model


def pipeline_from_components(model: LoadedBaseModel, unet: torch.nn.Module | None = None):
    """A diffusers text-to-image pipeline sharing the loaded components (no copies)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from dreamloom.samplers import DEFAULT_SAMPLER, make_scheduler

    scheduler = make_scheduler(DEFAULT_SAMPLER, model.noise_scheduler.config)
    parts = {"vae": model.vae, "unet": unet or model.unet, "scheduler": scheduler}
    if model.is_sdxl:
        pipe = StableDiffusionXLPipeline(
            text_encoder=model.text_encoders[0],
            text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0],
            tokenizer_2=model.tokenizers[1],
            **parts,
        )
    else:
        pipe = StableDiffusionPipeline(
            text_encoder=model.text_encoders[0],
            tokenizer=model.tokenizers[0],
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **parts,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
