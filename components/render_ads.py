from kfp import dsl
from kfp.dsl import HTML, Artifact, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def render_ads(
    product: str,
    brief: dict,
    triton_url: str,
    ads: Output[Artifact],
    page: Output[HTML],
    variants: int = 4,
    seed: int = 0,
    style: str = "",
    style_weight: float = 0.6,
    size: str = "",
    steps: int = 25,
    guidance: float = 7.5,
) -> int:
    """Render ad variants of one product for every scene of a brief, through the serving endpoint.

    Args:
        product: The product's deployed adapter, `NAME@ALIAS`.
        brief: The scenes, as `dreamloom.usecases.ad.Brief` (prompts per scene, a negative prompt).
        triton_url: Triton's HTTP address.
        variants: Seeded variants per scene.
        seed: The first variant's seed; variant i uses seed + i.
        style: A deployed style adapter mixed in, `NAME@ALIAS`; empty for none.
        style_weight: The style adapter's weight.
        size: `WIDTHxHEIGHT`; empty for the base model's size.
        steps: Denoising steps per image.
        guidance: Classifier-free guidance scale.

    Returns:
        ads: The images, their contact sheet and the recipe that renders them again.
        page: The images with their prompts and seeds, as a page for the KFP UI.
        Output: How many images were rendered.
    """
    from pathlib import Path

    from dreamloom.serving.client import ServingClient
    from dreamloom.steps import run_step
    from dreamloom.usecases.ad import Brief, plan_ads
    from dreamloom.usecases.jobs import inline_html, parse_size, render

    def work():
        plan = Brief.model_validate(brief)
        recipe, staged = plan_ads(
            product,
            plan.prompts(),
            variants=variants,
            seed=seed,
            size=parse_size(size),
            style=style or None,
            style_weight=style_weight,
            negative_prompt=plan.negative_prompt,
            steps=steps,
            guidance=guidance,
        )
        with ServingClient(triton_url) as client:
            out = render(recipe, client, Path(ads.path), staged=staged)
        Path(page.path).write_text(inline_html(out))
        return len(recipe.renders)

    return run_step(work)
