"""Scene edits over one image or a folder of frames: img2img with a strength ("make it look more
cinematic"), or object removal by inpainting a mask. One seed for every frame, so a sequence
changes consistently."""

from __future__ import annotations

from pathlib import Path

from dreamloom.data.images import image_files
from dreamloom.errors import DreamloomError
from dreamloom.usecases.jobs import Recipe, Render, Staged, multiple_of_eight
from dreamloom.usecases.pictures import mask_from_file, picture

REMOVAL_PROMPT = "empty background, nothing there"
MAX_FRAMES = 500


def frames_of(source: Path) -> list[Path]:
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DreamloomError(f"{source} is neither an image nor a folder of frames")
    frames = image_files(source)
    if not frames:
        raise DreamloomError(f"{source} has no frames (.png, .jpg, .webp)")
    if len(frames) > MAX_FRAMES:
        raise DreamloomError(f"{source} has {len(frames)} frames; edit at most {MAX_FRAMES} at a time")
    return frames


def plan_edit(
    source: Path,
    prompt: str = "",
    strength: float = 0.5,
    remove: Path | None = None,
    seed: int = 0,
    adapter: str = "",
    steps: int = 25,
    guidance: float = 7.5,
    negative_prompt: str = "",
) -> tuple[Recipe, Staged]:
    if remove is None and not prompt.strip():
        raise DreamloomError(
            "say what the edit is with --prompt (e.g. 'cinematic lighting'), or remove with --remove MASK"
        )
    if not 0.01 <= strength <= 1.0:
        raise DreamloomError(f"--strength {strength} is out of range: 0.01 (barely) to 1.0 (repaint)")
    frames = frames_of(source)
    pictures = [picture(frame, "frame") for frame in frames]
    sizes = {image.size for image in pictures}
    if len(sizes) > 1:
        raise DreamloomError(f"the frames have different sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))})")
    size = pictures[0].size
    staged, inputs = Staged(), {}
    if remove is not None:
        inputs["mask"] = staged.add("mask", mask_from_file(remove, size))
    renders = [
        Render(
            prompt=prompt or REMOVAL_PROMPT,
            negative_prompt=negative_prompt,
            seed=seed,
            label=frame.name,
            inputs={"init_image": staged.add(f"frame-{index:04d}", image)},
        )
        for index, (frame, image) in enumerate(zip(frames, pictures, strict=True))
    ]
    width, height = multiple_of_eight(*size)
    recipe = Recipe(
        kind="edit",
        mode="inpaint" if remove is not None else "img2img",
        adapter=adapter,
        steps=steps,
        guidance=guidance,
        width=width,
        height=height,
        strength=strength,
        inputs=inputs,
        digests=staged.digests(),
        keep_outside_mask=remove is not None,
        renders=renders,
        notes={"source": str(source), "edit": "remove" if remove is not None else prompt},
    )
    return recipe, staged
