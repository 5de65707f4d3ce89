"""Product design from a sketch: variants that follow its lines (ControlNet scribble or canny),
described by a prompt, optionally in a product or style concept."""

from __future__ import annotations

from pathlib import Path

from dreamloom.errors import DreamloomError
from dreamloom.usecases.jobs import Recipe, Render, Staged, multiple_of_eight, seeds
from dreamloom.usecases.pictures import condition, picture


def plan_design(
    sketch: Path,
    controlnet: str,
    prompt: str,
    condition_kind: str = "scribble",
    variants: int = 4,
    seed: int = 0,
    concept: str | None = None,
    size: tuple[int, int] = (0, 0),
    control_scale: float = 1.0,
    steps: int = 25,
    guidance: float = 7.5,
    negative_prompt: str = "",
) -> tuple[Recipe, Staged]:
    if not controlnet.strip():
        raise DreamloomError("design needs --controlnet: a deployed ControlNet, e.g. sketch-scribble@champion")
    if not prompt.strip():
        raise DreamloomError("design needs --prompt describing the product")
    drawing = picture(sketch, "sketch")
    size = size if size[0] else multiple_of_eight(*drawing.size)
    staged = Staged()
    inputs = {"control_image": staged.add("condition", condition(drawing, condition_kind, size))}
    adapters = [concept, controlnet] if concept else [controlnet]
    renders = [
        Render(prompt=prompt, negative_prompt=negative_prompt, seed=s, label=f"variant {i + 1}")
        for i, s in enumerate(seeds(seed, variants))
    ]
    recipe = Recipe(
        kind="design",
        mode="controlnet",
        adapter=", ".join(adapters),
        steps=steps,
        guidance=guidance,
        width=size[0],
        height=size[1],
        control_scale=control_scale,
        inputs=inputs,
        digests=staged.digests(),
        renders=renders,
        notes={"sketch": str(sketch), "condition": condition_kind},
    )
    return recipe, staged
