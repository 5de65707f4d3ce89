"""The toy world's evaluator as ``dreamloom evaluate`` encoders.

- ``toy-attributes`` (the CLIP role): an image becomes its attribute probabilities; a prompt
  becomes the attributes it names. Its text score is the mean probability of the named values
  (CLIP-T: the share of the prompt the picture shows); its image score is the chance two
  pictures agree attribute by attribute (CLIP-I).
- ``toy-subject`` (the DINO role): the contrastive subject embedding, compared by cosine.
"""

from __future__ import annotations

import re
from functools import cache

import torch
from PIL import Image

from dreamloom.toy.evaluator import ATTRIBUTES, load, to_pixels

_PLURALS = {f"{shape}s": shape for shape in ATTRIBUTES["shape"]} | {"crosses": "cross"}


@cache
def _models():
    return load()


def named_attributes(text: str) -> dict[str, str]:
    """The attribute values a prompt names, by group."""
    words = re.findall(r"[a-z]+", text.lower())
    phrase = " ".join(words)
    named: dict[str, str] = {}
    for word in words:
        word = _PLURALS.get(word, word)
        for group in ("shape", "colour", "background", "texture"):
            if word in ATTRIBUTES[group] and group not in named:
                named[group] = word
    background = re.search(r"on an? (\w+) background", phrase)
    if background and background.group(1) in ATTRIBUTES["background"]:
        named["background"] = background.group(1)
    for position in ATTRIBUTES["position"]:
        if position in phrase:
            named["position"] = position
    if words and words[0] == "two":
        named["count"] = "two"
    return named


class ToyAttributeEncoder:
    name = "toy-attributes (trained classifiers)"

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        classifier, _ = _models()
        outputs = classifier(to_pixels(images))
        return torch.cat([outputs[group].softmax(-1) for group in ATTRIBUTES], dim=-1)

    def text_scores(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        scores = torch.zeros(images.shape[0], len(texts))
        for column, text in enumerate(texts):
            named = named_attributes(text)
            if not named:
                continue
            probabilities = [images[:, self._offset(group, value)] for group, value in named.items()]
            scores[:, column] = torch.stack(probabilities).mean(0)
        return scores

    def image_scores(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return first @ second.T / len(ATTRIBUTES)  # the expected share of groups on which they agree

    @staticmethod
    def _offset(group: str, value: str) -> int:
        offset = 0
        for name, values in ATTRIBUTES.items():
            if name == group:
                return offset + values.index(value)
            offset += len(values)
        raise KeyError(group)


class ToySubjectEncoder:
    name = "toy-subject (contrastive embedder)"

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        _, embedder = _models()
        return embedder(to_pixels(images))

    def image_scores(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return first @ second.T
