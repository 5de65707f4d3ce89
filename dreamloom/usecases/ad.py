"""Ad variants of a product concept: a registered adapter (``shoe@champion``) drawn in the scenes
of a brief, optionally in a brand style (a second adapter, mixed by weight) and following a
layout (a sketch or reference turned into a ControlNet condition)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dreamloom.errors import DreamloomError
from dreamloom.usecases.jobs import Recipe, Render, Staged, multiple_of_eight, seeds
from dreamloom.usecases.pictures import condition, picture


class Brief(BaseModel):
    """What the ads show: ``{subject}`` in each scene's text becomes the product's words."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, description="how prompts name the product, e.g. 'a sks shoe'")
    scenes: list[str] = Field(min_length=1, description="one ad per scene and variant")
    negative_prompt: str = ""
    style_words: str = Field("", description="appended to every prompt, e.g. 'studio lighting'")

    def prompts(self) -> list[str]:
        prompts = []
        for scene in self.scenes:
            text = scene.format(subject=self.subject) if "{subject}" in scene else f"{self.subject} {scene}"
            prompts.append(f"{text}, {self.style_words}" if self.style_words else text)
        return prompts


def read_brief(path: Path) -> Brief:
    if not Path(path).is_file():
        raise DreamloomError(f"brief {path} does not exist")
    try:
        document = yaml.safe_load(Path(path).read_text())
        return Brief.model_validate(document or {})
    except yaml.YAMLError as exc:
        raise DreamloomError(f"brief {path} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'brief'}: {e['msg']}" for e in exc.errors())
        raise DreamloomError(f"brief {path} is incomplete: {problems} (it needs subject and scenes)") from None


def read_prompt_file(path: Path) -> list[str]:
    if not Path(path).is_file():
        raise DreamloomError(f"prompt file {path} does not exist")
    prompts = [
        line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    if not prompts:
        raise DreamloomError(f"prompt file {path} has no prompts (one per line)")
    return prompts


def plan_ads(
    product: str,
    prompts: list[str],
    variants: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (0, 0),
    style: str | None = None,
    style_weight: float = 0.6,
    layout: Path | None = None,
    layout_adapter: str | None = None,
    condition_kind: str = "canny",
    negative_prompt: str = "",
    steps: int = 25,
    guidance: float = 7.5,
    product_weight: float = 1.0,
) -> tuple[Recipe, Staged]:
    """The recipe of an ad job: every (prompt, variant) with its seed; nothing is sent yet."""
    if not product.strip():
        raise DreamloomError("an ad needs --product: the registered concept, e.g. shoe@champion")
    if not prompts or not all(p.strip() for p in prompts):
        raise DreamloomError("the brief has no prompts: give --brief, --prompt-file or --prompt")
    if variants < 1 or variants > 64:
        raise DreamloomError(f"--variants {variants} is out of range: 1 to 64")
    if bool(layout) != bool(layout_adapter):
        raise DreamloomError("a layout needs both --layout (a sketch or reference) and --layout-adapter (a ControlNet)")
    adapters = [f"{product}*{product_weight:g}"]
    if style:
        adapters.append(f"{style}*{style_weight:g}")
    staged, inputs, mode = Staged(), {}, "txt2img"
    notes = {"product": product, "style": style or "", "variants": str(variants)}
    if layout:
        sketch = picture(layout, "layout")
        size = size if size[0] else multiple_of_eight(*sketch.size)
        inputs["control_image"] = staged.add("layout", condition(sketch, condition_kind, size))
        adapters.append(layout_adapter)
        mode = "controlnet"
        notes |= {"layout": str(layout), "condition": condition_kind}
    renders = [
        Render(prompt=prompt, negative_prompt=negative_prompt, seed=s, label=f"prompt {p + 1}, variant {v + 1}")
        for p, prompt in enumerate(prompts)
        for v, s in enumerate(seeds(seed, variants))
    ]
    recipe = Recipe(
        kind="ad",
        mode=mode,
        adapter=", ".join(adapters),
        steps=steps,
        guidance=guidance,
        width=size[0],
        height=size[1],
        inputs=inputs,
        digests=staged.digests(),
        renders=renders,
        notes=notes,
    )
    return recipe, staged
