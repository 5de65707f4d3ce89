"""The four image transforms diffusers' DreamBooth examples take from ``torchvision.transforms``
(Resize, CenterCrop/RandomCrop, ToTensor, Normalize, composed), written with PIL and numpy.

No CPU torchvision wheel imports on these machines (PyPI's build fails with "operator
torchvision::nms does not exist"), so ``bench/diffusers_script.py`` points the example's one
``from torchvision import transforms`` line here. The module is deliberately not named
``torchvision``: transformers would then import ``torchvision.io`` from it.
"""

from __future__ import annotations

import enum
import random

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    NEAREST = Image.Resampling.NEAREST
    BILINEAR = Image.Resampling.BILINEAR
    BICUBIC = Image.Resampling.BICUBIC
    BOX = Image.Resampling.BOX
    HAMMING = Image.Resampling.HAMMING
    LANCZOS = Image.Resampling.LANCZOS


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, value):
        for transform in self.transforms:
            value = transform(value)
        return value


class Resize:
    """An int size scales the shorter side to it, keeping the aspect ratio (torchvision's rule)."""

    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size, self.resample = size, interpolation.value

    def __call__(self, image: Image.Image) -> Image.Image:
        if not isinstance(self.size, int):
            height, width = self.size
            return image.resize((width, height), self.resample)
        width, height = image.size
        scale = self.size / min(width, height)
        size = (max(self.size, round(width * scale)), max(self.size, round(height * scale)))
        return image.resize(size, self.resample)


class CenterCrop:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        left, top = (width - self.size) // 2, (height - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))


class RandomCrop(CenterCrop):
    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        left, top = random.randint(0, width - self.size), random.randint(0, height - self.size)
        return image.crop((left, top, left + self.size, top + self.size))


class ToTensor:
    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std
