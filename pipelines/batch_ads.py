"""Batch ad generation: ad variants for many products from one brief, a step per product (in
parallel), each rendered through the serving endpoint with its images, recipe and an HTML page
for the KFP UI."""

from pathlib import Path

from kfp import dsl

from components.render_ads import render_ads
from dreamloom.k8s.names import DEFAULT_RELEASE, ReleaseNames
from pipelines._tasks import talks_to_services

COMPILED = Path(__file__).with_name("batch_ads.yaml")


def batch_ads_pipeline(release: ReleaseNames = DEFAULT_RELEASE):
    """The batch-ads pipeline for a release of the chart (it mounts none of the release's objects;
    its name on a KFP backend is the release's)."""

    @dsl.pipeline(
        name=release.pipeline("batch_ads"), description="Ad variants for many product concepts from one brief."
    )
    def batch_ads(
        products: list,
        brief: dict,
        triton_url: str,
        variants: int = 4,
        seed: int = 0,
        style: str = "",
        style_weight: float = 0.6,
        size: str = "",
        steps: int = 25,
    ):
        """Render ad variants for many deployed product concepts from one brief, a step per product.

        Args:
            products: The products' deployed adapters, each `NAME@ALIAS`.
            brief: The scenes, as `dreamloom.usecases.ad.Brief` (prompts per scene, a negative prompt).
            triton_url: Triton's HTTP address.
            variants: Seeded variants per scene.
            seed: The first variant's seed; variant i uses seed + i.
            style: A deployed style adapter mixed into every ad, `NAME@ALIAS`; empty for none.
            style_weight: The style adapter's weight.
            size: `WIDTHxHEIGHT`; empty for the base model's size.
            steps: Denoising steps per image.
        """
        with dsl.ParallelFor(products, parallelism=4) as product:
            talks_to_services(
                render_ads(
                    product=product,
                    brief=brief,
                    triton_url=triton_url,
                    variants=variants,
                    seed=seed,
                    style=style,
                    style_weight=style_weight,
                    size=size,
                    steps=steps,
                )
            )

    return batch_ads


batch_ads = batch_ads_pipeline()  # for the release named dreamloom, and local runs
