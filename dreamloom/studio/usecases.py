"""The Use cases tab: an ad brief or a try-on planned by ``dreamloom.usecases`` exactly as the
``dreamloom ad`` and ``dreamloom tryon`` commands plan them, rendered through the endpoint into
a job folder (images, contact sheet, recipe), and shown."""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from dreamloom.errors import DreamloomError
from dreamloom.serving.client import ServingClient
from dreamloom.studio.generate import painted_mask
from dreamloom.studio.jobs import job_folder
from dreamloom.usecases.ad import plan_ads
from dreamloom.usecases.jobs import render
from dreamloom.usecases.tryon import before_after, plan_tryon

PAINTED = "painted"  # the try-on area is what was painted on the photo
REGIONS = (PAINTED, "upper", "lower", "full")


def ads(
    url: str,
    product: str,
    prompts: list[str],
    variants: int,
    seed: int,
    steps: int,
    out: Path,
    style: str | None = None,
    layout: Image.Image | None = None,
    layout_adapter: str | None = None,
    condition_kind: str = "canny",
) -> tuple[Image.Image, Path]:
    """A grid of ad variants: every prompt of the brief, ``variants`` seeds each."""
    with tempfile.TemporaryDirectory(prefix="dreamloom-studio-") as scratch:
        layout_file = _saved(layout, Path(scratch) / "layout.png")
        recipe, staged = plan_ads(
            product.strip(),
            prompts,
            variants=int(variants),
            seed=int(seed),
            style=(style or "").strip() or None,
            layout=layout_file,
            layout_adapter=(layout_adapter or "").strip() or None,
            condition_kind=condition_kind,
            steps=int(steps),
        )
        folder = _render(url, recipe, staged, job_folder(out, "ad"))
    return Image.open(folder / "contact-sheet.png").convert("RGB"), folder


def tryon(
    url: str,
    garment: str,
    photo: Image.Image | None,
    painted: dict | None,
    prompt: str,
    region: str,
    variants: int,
    seed: int,
    steps: int,
    out: Path,
) -> tuple[Image.Image, Path]:
    """The person before, then each variant wearing the garment inside the area: what was painted
    over the photo (``painted``, an image editor's value), or a region."""
    if photo is None:
        raise DreamloomError("try-on needs a photo of the person: upload one")
    person = photo.convert("RGB")
    with tempfile.TemporaryDirectory(prefix="dreamloom-studio-") as scratch:
        if region == PAINTED:
            _, area = painted_mask({"background": person, "layers": (painted or {}).get("layers") or []})
            mask_file, region_name = _saved(area, Path(scratch) / "mask.png"), None
        else:
            mask_file, region_name = None, region
        person_file = _saved(person, Path(scratch) / "person.png")
        recipe, staged = plan_tryon(
            garment.strip(),
            person_file,
            prompt,
            mask=mask_file,
            region=region_name,
            variants=int(variants),
            seed=int(seed),
            steps=int(steps),
        )
        folder = _render(url, recipe, staged, job_folder(out, "tryon"))
    results = [Image.open(path).convert("RGB") for path in sorted((folder / "images").glob("*.png"))]
    return before_after(person, results), folder


def on_canvas(photo: Image.Image | None) -> dict | None:
    """The uploaded photo as the image editor's canvas, to paint the garment area on."""
    return None if photo is None else {"background": photo, "layers": [], "composite": photo}


def _render(url: str, recipe, staged, folder: Path) -> Path:
    if not url:
        raise DreamloomError("no serving endpoint: start the studio with --triton-url (or --serve-local)")
    with ServingClient(url) as client:
        return render(recipe, client, folder, staged)


def _saved(image: Image.Image | None, path: Path) -> Path | None:
    if image is None:
        return None
    image.convert("RGB").save(path)
    return path
