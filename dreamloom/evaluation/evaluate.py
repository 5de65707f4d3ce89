"""Measuring a personalized model the way the DreamBooth paper does.

For a set of prompts (templates with the subject, e.g. "a {} on the beach") the model renders a few
seeded images each; then
- CLIP-T (prompt fidelity): mean cosine between each prompt's CLIP text embedding and its images;
- CLIP-I (subject fidelity): mean cosine between generated and reference images in CLIP space;
- DINO (subject fidelity): the same with DINO embeddings, which separate instances of a class better;
- diversity: 1 - mean cosine (DINO) between images of the same prompt.
A grid per prompt is kept for people to look at.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from PIL import Image

from dreamloom.errors import DreamloomError
from dreamloom.evaluation.encoders import load_encoder
from dreamloom.progress import Progress

TEMPLATES = {
    "object": [
        "a {} in the jungle",
        "a {} in the snow",
        "a {} on the beach",
        "a {} on a cobblestone street",
        "a {} on top of pink fabric",
        "a {} on a wooden floor",
        "a {} with a city in the background",
        "a {} with a mountain in the background",
        "a red {}",
        "a {} floating on top of water",
    ],
    "live": [
        "a {} in the jungle",
        "a {} on the beach",
        "a {} wearing a red hat",
        "a {} wearing a santa hat",
        "a {} in a chef outfit",
        "a {} in a police outfit",
        "a {} sleeping",
        "a {} swimming",
        "a {} with a city in the background",
        "a {} in a purple wizard outfit",
    ],
    "style": [
        "a painting of a mountain in the style of {}",
        "a portrait of a woman in the style of {}",
        "a city street in the style of {}",
        "a bowl of fruit in the style of {}",
        "a lighthouse at night in the style of {}",
        "a cat in the style of {}",
        "a forest in the style of {}",
        "a car in the style of {}",
    ],
}
METRICS = ("clip_t", "clip_i", "dino", "diversity")


@dataclass(frozen=True)
class EvalSettings:
    subject: str  # what "{}" becomes, e.g. "sks sneaker" or "<sks-mug>"
    kind: str = "object"  # object | live | style (which templates)
    prompts: tuple[str, ...] = ()  # own templates with "{}"; default: the kind's templates
    class_word: str | None = None  # CLIP-T reads the prompt with the subject replaced by this
    images_per_prompt: int = 4
    steps: int = 25
    guidance: float = 7.5
    seed: int = 0
    clip_encoder: str = "tiny-clip"
    dino_encoder: str = "tiny-dino"

    def __post_init__(self):
        if self.kind not in TEMPLATES:
            raise DreamloomError(f"unknown prompt kind {self.kind!r}; choose one of {', '.join(TEMPLATES)}")
        if any("{}" not in prompt for prompt in self.prompts):
            raise DreamloomError('every evaluation prompt needs "{}" where the subject goes')
        if self.images_per_prompt < 2:
            raise DreamloomError("evaluation needs at least 2 images per prompt (diversity compares them)")
        if not 1 <= self.steps <= 200:
            raise DreamloomError(f"evaluation steps must be between 1 and 200 (got {self.steps})")

    @property
    def templates(self) -> list[str]:
        return list(self.prompts) or TEMPLATES[self.kind]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    encoders: dict[str, str]
    per_prompt: list[dict]
    grids: list[tuple[str, Image.Image]] = field(default_factory=list)


def evaluate(
    pipe, references: list[Image.Image], settings: EvalSettings, control_image=None, resolution=None
) -> EvalResult:
    """Render the prompt set with ``pipe`` and score it against the reference images."""
    from dreamloom.generation import GenerationRequest, generate

    if not references:
        raise DreamloomError("evaluation needs reference images of the subject (--references DIR)")
    clip = load_encoder(settings.clip_encoder, "clip")
    dino = load_encoder(settings.dino_encoder, "dino")
    clip_refs, dino_refs = clip.images(references), dino.images(references)
    per_prompt, grids = [], []
    progress = Progress(len(settings.templates), "evaluate", min_interval_s=0)
    for template in settings.templates:
        prompt = template.format(settings.subject)
        request = GenerationRequest(
            [prompt],
            images_per_prompt=settings.images_per_prompt,
            steps=settings.steps,
            guidance=settings.guidance,
            seed=settings.seed,
            control_image=control_image,
        )
        images = generate(pipe, request, resolution)[0]
        text = template.format(settings.class_word) if settings.class_word else prompt
        clip_images, dino_images = clip.images(images), dino.images(images)
        per_prompt.append(
            {
                "prompt": prompt,
                "clip_t": float(clip.text_scores(clip_images, [text]).mean()),
                "clip_i": float(clip.image_scores(clip_images, clip_refs).mean()),
                "dino": float(dino.image_scores(dino_images, dino_refs).mean()),
                "diversity": _diversity(dino.image_scores(dino_images, dino_images)),
            }
        )
        grids.append((prompt, make_image_grid(images, rows=1, cols=len(images))))
        progress.update(dino=per_prompt[-1]["dino"])
    metrics = {name: statistics.fmean(row[name] for row in per_prompt) for name in METRICS}
    return EvalResult(metrics, {"clip": clip.name, "dino": dino.name}, per_prompt, grids)


def _diversity(similarity: torch.Tensor) -> float:
    count = similarity.shape[0]
    off_diagonal = (similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1))
    return float(1.0 - off_diagonal)


def reference_images(folder: Path, limit: int = 32) -> list[Image.Image]:
    """The subject's real images (the training folder, or a prepared set's images), validated like
    training data."""
    from dreamloom.data.images import IMAGE_SUFFIXES, ImageProblem, open_rgb
    from dreamloom.data.prepare import PreparedDataset, is_prepared

    folder = Path(folder)
    if not folder.is_dir():
        raise DreamloomError(f"reference folder {folder} does not exist; pass --references DIR")
    if is_prepared(folder):
        paths = [folder / item.image for item in PreparedDataset.load(folder).items]
    else:
        paths = sorted(folder.iterdir())
    images = []
    for path in paths:
        if path.suffix.lower() in IMAGE_SUFFIXES and Path(path.stem).suffix not in (".mask", ".cond"):
            try:
                images.append(open_rgb(path, 50_000_000))
            except ImageProblem as exc:
                raise DreamloomError(f"reference image {path.name}: {exc}") from None
    if not images:
        raise DreamloomError(f"no reference images in {folder}")
    return images[:limit]
