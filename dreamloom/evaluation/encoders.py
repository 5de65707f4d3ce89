"""Image and text encoders for the fidelity metrics, chosen by name.

In production the metrics use the encoders of the DreamBooth paper: CLIP ViT-L/14
(``openai/clip-vit-large-patch14``) for CLIP-T and CLIP-I, DINO ViT-S/16 (``facebook/dino-vits16``)
for DINO, loaded by hub id from safetensors. Offline, ``tiny-clip`` and ``tiny-dino`` are seeded,
untrained encoders of the same classes: their numbers exercise the pipeline, they do not measure
fidelity. Every result records which encoder produced it, and the promotion gate refuses to
compare numbers from different encoders. Other encoders (the toy world's) register themselves in
``ENCODERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from PIL import Image

from dreamloom.errors import DreamloomError

PRODUCTION_CLIP = "openai/clip-vit-large-patch14"
PRODUCTION_DINO = "facebook/dino-vits16"
TINY_CLIP = "tiny-clip"
TINY_DINO = "tiny-dino"


class _CosineScores:
    """Scores as cosine similarities of unit embeddings (CLIP, DINO)."""

    def image_scores(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return first @ second.T

    def text_scores(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return images @ self.texts(texts).T


class ClipEncoder(_CosineScores):
    """Text and image embeddings in CLIP's joint space (unit length)."""

    def __init__(self, name: str, model, tokenizer, image_processor):
        self.name, self.model, self.tokenizer, self.image_processor = name, model.eval(), tokenizer, image_processor

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor(images=[i.convert("RGB") for i in images], return_tensors="pt").pixel_values
        return _unit(self.model.get_image_features(pixel_values=pixels).pooler_output)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        return _unit(self.model.get_text_features(**tokens).pooler_output)


class DinoEncoder(_CosineScores):
    """Self-supervised image embeddings (the ViT's class token), sensitive to subject identity."""

    def __init__(self, name: str, model, image_processor):
        self.name, self.model, self.image_processor = name, model.eval(), image_processor

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor(images=[i.convert("RGB") for i in images], return_tensors="pt").pixel_values
        return _unit(self.model(pixel_values=pixels).last_hidden_state[:, 0])


def _unit(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=-1)


def _hub_clip(repo_id: str) -> ClipEncoder:
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    model = CLIPModel.from_pretrained(repo_id, use_safetensors=True)
    return ClipEncoder(
        repo_id, model, AutoTokenizer.from_pretrained(repo_id), CLIPImageProcessorPil.from_pretrained(repo_id)
    )


def _hub_dino(repo_id: str) -> DinoEncoder:
    from transformers import ViTImageProcessorPil, ViTModel

    model = ViTModel.from_pretrained(repo_id, use_safetensors=True, add_pooling_layer=False)
    return DinoEncoder(repo_id, model, ViTImageProcessorPil.from_pretrained(repo_id))


def _tiny_clip() -> ClipEncoder:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from dreamloom.models.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**small, "vocab_size": CLIP_VOCAB_SIZE, "max_position_embeddings": 77, "eos_token_id": 49407},
        vision_config={**small, "image_size": 64, "patch_size": 8},
        projection_dim=32,
    )
    torch.manual_seed(0)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    return ClipEncoder(TINY_CLIP + " (seeded, untrained)", CLIPModel(config), build_clip_tokenizer(), processor)


def _tiny_dino() -> DinoEncoder:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    config = ViTConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8
    )
    torch.manual_seed(1)
    processor = ViTImageProcessorPil(size={"height": 64, "width": 64})
    return DinoEncoder(TINY_DINO + " (seeded, untrained)", ViTModel(config, add_pooling_layer=False), processor)


def _toy_attributes():
    from dreamloom.toy.encoders import ToyAttributeEncoder

    return ToyAttributeEncoder()


def _toy_subject():
    from dreamloom.toy.encoders import ToySubjectEncoder

    return ToySubjectEncoder()


# name -> factory; other names load from the hub as CLIP or DINO models.
ENCODERS: dict[str, Callable[[], object]] = {
    TINY_CLIP: _tiny_clip,
    TINY_DINO: _tiny_dino,
    "toy-attributes": _toy_attributes,
    "toy-subject": _toy_subject,
}


@cache
def load_encoder(name: str, kind: str):
    """``kind`` is "clip" or "dino"; ``name`` a registered name or a hub id."""
    if name in ENCODERS:
        return ENCODERS[name]()
    try:
        return _hub_clip(name) if kind == "clip" else _hub_dino(name)
    except OSError as exc:
        raise DreamloomError(
            f"cannot load the {kind} encoder {name!r} ({str(exc).splitlines()[0]}); offline, use "
            f"--{kind}-encoder {TINY_CLIP if kind == 'clip' else TINY_DINO} (untrained: plumbing only)"
        ) from None


def default_encoders(base_spec: str) -> tuple[str, str]:
    """The encoders a base is evaluated with unless the user names others."""
    from dreamloom.models.tiny import TINY_KINDS

    if base_spec in TINY_KINDS:
        return TINY_CLIP, TINY_DINO
    return DEFAULT_BY_BASE.get(base_spec, (PRODUCTION_CLIP, PRODUCTION_DINO))


# Bases with their own evaluators.
DEFAULT_BY_BASE: dict[str, tuple[str, str]] = {"toy": ("toy-attributes", "toy-subject")}
