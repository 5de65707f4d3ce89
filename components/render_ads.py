from kfp import dsl
from kfp.dsl import HTML, Artifact, Output

from components._image import COMPONENT


@dsl.component(**COMPONENT)
def render_ads(
    product: str, brief: dict, triton_url: str, ads: Output[Artifact], page: Output[HTML], variants: int = 4,
    seed: int = 0, style: str = "", style_weight: float = 0.6, size: str = "", steps: int = 25, guidance: float = 7.5,
) -> int:  # fmt: skip
    """Ad variants of ``product`` for every scene of the brief through the endpoint: the images,
    contact sheet and recipe as an artifact, the index as an HTML page for the KFP UI."""
    from pathlib import Path

    from dreamloom.serving.client import ServingClient
    from dreamloom.usecases.ad import Brief, plan_ads
    from dreamloom.usecases.jobs import inline_html, parse_size, render

    plan = Brief.model_validate(brief)
    recipe, staged = plan_ads(
        product, plan.prompts(), variants=variants, seed=seed, size=parse_size(size), style=style or None,
        style_weight=style_weight, negative_prompt=plan.negative_prompt, steps=steps, guidance=guidance,
    )  # fmt: skip
    with ServingClient(triton_url) as client:
        out = render(recipe, client, Path(ads.path), staged=staged)
    Path(page.path).write_text(inline_html(out))
    return len(recipe.renders)
