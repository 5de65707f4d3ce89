"""Virtual try-on: a garment concept (an adapter learned from a few garment photos) inpainted onto
a person photo inside a mask. The mask is given, computed by the region heuristic, or segmented by
a hub model; outside it every pixel of the photo is kept exactly."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from dreamloom.errors import DreamloomError
from dreamloom.usecases.jobs import Recipe, Render, Staged, multiple_of_eight, seeds
from dreamloom.usecases.pictures import mask_from_file, picture, region_mask, segmentation_mask

GARMENT_LABELS = {"upper": ["Upper-clothes"], "lower": ["Pants", "Skirt"], "full": ["Upper-clothes", "Pants", "Dress"]}


def plan_tryon(
    garment: str,
    person: Path,
    prompt: str,
    mask: Path | None = None,
    region: str | None = None,
    segmenter: str | None = None,
    variants: int = 2,
    seed: int = 0,
    strength: float = 0.99,
    steps: int = 30,
    guidance: float = 7.5,
    negative_prompt: str = "",
) -> tuple[Recipe, Staged]:
    if not garment.strip():
        raise DreamloomError("try-on needs --garment: the garment concept, e.g. jacket@champion")
    if not prompt.strip():
        raise DreamloomError("try-on needs --prompt naming the garment, e.g. 'a person wearing a sks jacket'")
    if sum(x is not None for x in (mask, region)) != 1:
        raise DreamloomError("give the garment area as --mask FILE or --region upper|lower|full")
    photo = picture(person, "person photo")
    if mask is not None:
        area = mask_from_file(mask, photo.size)
    elif segmenter:
        area = segmentation_mask(photo, segmenter, _labels(region))
    else:
        area = region_mask(photo, region)
    staged = Staged()
    width, height = multiple_of_eight(*photo.size)
    inputs = {"init_image": staged.add("person", photo), "mask": staged.add("mask", area)}
    renders = [
        Render(prompt=prompt, negative_prompt=negative_prompt, seed=s, label=f"variant {i + 1}")
        for i, s in enumerate(seeds(seed, variants))
    ]
    recipe = Recipe(
        kind="tryon",
        mode="inpaint",
        adapter=garment,
        steps=steps,
        guidance=guidance,
        width=width,
        height=height,
        strength=strength,
        inputs=inputs,
        digests=staged.digests(),
        keep_outside_mask=True,
        renders=renders,
        notes={"person": str(person), "mask": str(mask) if mask else f"region {region} ({segmenter or 'heuristic'})"},
    )
    return recipe, staged


def before_after(person: Image.Image, results: list[Image.Image]) -> Image.Image:
    """The photo, then each result, side by side."""
    from dreamloom.usecases.jobs import contact_sheet

    return contact_sheet([person, *results], columns=len(results) + 1)


def _labels(region: str | None) -> list[str]:
    if region not in GARMENT_LABELS:
        raise DreamloomError("with --segmenter, say which garment with --region upper|lower|full")
    return GARMENT_LABELS[region]
