"""Training examples in memory, and the order in which each worker sees them.

Personalization sets are small (a handful to a few hundred images), so every prepared image is
held in memory. When the VAE is frozen (always here) each image's latent distribution is encoded
the first time a batch draws it and kept (``cache_latents``): a run never encodes more than one
that encodes every step, and a short run on a large set does not wait for all of it up front. When
the text encoders are frozen each caption is encoded once (``cache_text_embeddings``). The batch
order, flips and caption choices are a pure function of (seed, epoch, rank), so a resumed run
continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamloom.data.prepare import PreparedDataset
from dreamloom.models.base import LoadedBaseModel, TextConditioning

_ENCODE_CHUNK = 8  # captions encoded at once


@dataclass
class Batch:
    """One micro-batch, ready for the denoiser."""

    latents: torch.Tensor
    text: TextConditioning
    time_ids: torch.Tensor | None  # SDXL size/crop conditioning
    condition: torch.Tensor | None = None  # ControlNet condition pixels in [0, 1]


@dataclass
class Draw:
    """Which examples a micro-batch holds, whether each is flipped, and which caption each uses."""

    indices: list[int]
    flips: list[bool]
    picks: list[float]  # in [0, 1): chooses among an example's captions


class ExampleSet:
    """Images, caption choices and (for ControlNet) conditions of one kind: instance or class."""

    def __init__(
        self,
        images: list[Image.Image],
        captions: list[list[str]],
        time_ids: torch.Tensor,
        model: LoadedBaseModel,
        *,
        cache_latents: bool,
        cache_text: bool,
        with_flips: bool,
        conditions: list[Image.Image] | None = None,
    ):
        self.model = model
        self.captions = captions
        self.sizes = [image.size for image in images]
        self.time_ids = time_ids.to(model.device)
        self.pixels = [_to_tensor(image) for image in images]
        self.with_flips = with_flips
        self.conditions = [_to_tensor(image) for image in conditions] if conditions else None
        # (index, flipped) -> the latent distribution's mean and std, filled as batches draw them.
        self.latent_cache: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] | None = (
            {} if cache_latents else None
        )
        self.unique_captions = sorted({text for choices in captions for text in choices})
        self.text = self._encode_captions(self.unique_captions) if cache_text else None

    @classmethod
    def from_prepared(cls, dataset: PreparedDataset, captions_for, model: LoadedBaseModel, **options) -> ExampleSet:
        """``captions_for(caption or None)`` gives each example's caption choices."""
        items = dataset.items
        images = [Image.open(dataset.root / item.image).convert("RGB") for item in items]
        conditions = None
        if dataset.condition:
            conditions = [Image.open(dataset.root / item.condition).convert("RGB") for item in items]
        time_ids = torch.tensor(
            [[i.original_size[1], i.original_size[0], *i.crop_top_left, i.size[1], i.size[0]] for i in items],
            dtype=torch.float32,
        )
        captions = [captions_for(item.caption) for item in items]
        return cls(images, captions, time_ids, model, conditions=conditions, **options)

    def __len__(self) -> int:
        return len(self.captions)

    def caption(self, index: int, pick: float = 0.0) -> str:
        choices = self.captions[index]
        return choices[min(int(pick * len(choices)), len(choices) - 1)]

    def condition_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.conditions[index].permute(1, 2, 0).numpy())

    def batch(self, draw: Draw, text_encoders=None, generator=None) -> Batch:
        indices, flips = draw.indices, draw.flips
        if self.latent_cache is not None:
            pairs = [self._cached_distribution(i, f) for i, f in zip(indices, flips, strict=True)]
            mean = torch.stack([m for m, _ in pairs])
            std = torch.stack([s for _, s in pairs])
        else:
            chosen = [self._pixels(i, f) for i, f in zip(indices, flips, strict=True)]
            mean, std = self.model.encode_images(_normalize(torch.stack(chosen)))
        latents = self.model.latents_from_distribution(mean, std, generator)
        captions = [self.caption(i, pick) for i, pick in zip(indices, draw.picks, strict=True)]
        if self.text is not None:
            text = self.text.index([self.unique_captions.index(c) for c in captions])
        else:
            text = self.model.encode_text(captions, text_encoders)
        time_ids = self.time_ids[indices] if self.model.is_sdxl else None
        condition = None
        if self.conditions is not None:
            pairs = zip(indices, flips, strict=True)
            chosen = [self.conditions[i].flip(-1) if flip else self.conditions[i] for i, flip in pairs]
            condition = torch.stack(chosen).to(self.model.device).float().div(255.0)
        return Batch(latents, text, time_ids, condition)

    def _pixels(self, index: int, flipped: bool) -> torch.Tensor:
        return self.pixels[index].flip(-1) if flipped else self.pixels[index]

    def _cached_distribution(self, index: int, flipped: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded alone, so an image's latents do not depend on the batch that first drew it (a
        resumed run draws them in other company and must compute the same numbers), in the VAE's
        own dtype whatever the step's autocast."""
        key = (index, flipped)
        if key not in self.latent_cache:
            with torch.autocast(self.model.device.type, enabled=False):
                mean, std = self.model.encode_images(_normalize(self._pixels(index, flipped)[None]))
            self.latent_cache[key] = (mean[0], std[0])
        return self.latent_cache[key]

    @torch.no_grad()
    def _encode_captions(self, captions: list[str]) -> TextConditioning:
        parts = [
            self.model.encode_text(captions[i : i + _ENCODE_CHUNK]) for i in range(0, len(captions), _ENCODE_CHUNK)
        ]
        merged = TextConditioning.cat(parts)
        return TextConditioning(merged.embeds.float(), None if merged.pooled is None else merged.pooled.float())


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div(127.5).sub(1.0)


class BatchPlan:
    """Which examples (and flips and captions) each worker uses for its n-th micro-batch.

    Per epoch, examples of the same size are shuffled and cut into batches, the batches are
    shuffled, and worker ``rank`` takes every ``world``-th one; all workers get the same count.
    """

    def __init__(
        self, sizes: list[tuple[int, int]], batch_size: int, seed: int, rank: int, world: int, random_flip: bool
    ):
        self.sizes, self.batch_size, self.seed = sizes, batch_size, seed
        self.rank, self.world, self.random_flip = rank, world, random_flip
        self._epoch: int | None = None
        self._batches: list[Draw] = []
        self.batches_per_epoch = len(self._epoch_batches(0))

    def micro_batch(self, index: int) -> Draw:
        epoch, position = divmod(index, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return self._batches[position]

    def _epoch_batches(self, epoch: int) -> list[Draw]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(self.sizes):
            groups.setdefault(size, []).append(index)
        batches = []
        for size in sorted(groups):
            members = groups[size]
            rng.shuffle(members)
            batches += [members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)]
        rng.shuffle(batches)
        while len(batches) < self.world:
            batches = batches + batches
        per_worker = len(batches) // self.world
        draws = [
            Draw(batch, [self.random_flip and rng.random() < 0.5 for _ in batch], [rng.random() for _ in batch])
            for batch in batches
        ]
        return draws[self.rank :: self.world][:per_worker]


def load_class_images(folder: Path) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.png"))]
