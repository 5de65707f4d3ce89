"""Dataset augmentation: check the classes, teach one adapter per class (a step per class, in
parallel), then deploy them, generate, and compare a classifier trained on real images with one
trained on real + synthetic images (metrics and a table in the KFP UI)."""

from pathlib import Path

from kfp import dsl

from components.augment_steps import check_classes, synthesize_and_compare, teach_class
from dreamloom.k8s.names import DEFAULT_RELEASE, ReleaseNames
from pipelines._tasks import serves, talks_to_services, trains

COMPILED = Path(__file__).with_name("augment.yaml")


def augment_pipeline(release: ReleaseNames = DEFAULT_RELEASE):
    """The augment pipeline for a release of the chart: its steps mount that release's claims
    and read its RayJob settings."""

    @dsl.pipeline(
        name=release.pipeline("augment"), description="Per-class adapters, synthetic images, the measured gain."
    )
    def augment(
        data: str,
        eval_data: str,
        triton_url: str,
        serving_store: str = "",
        preset: str = "default",
        settings: dict = {},  # noqa: B006 (KFP parameters are literals)
        launcher: str = "local",
        train_gpus: int = 1,
    ):
        """Teach one adapter per class, generate synthetic images through them, and measure the gain.

        Args:
            data: A folder of class subfolders of real training images.
            eval_data: A folder of held-out real images, by class, that both classifiers are scored on.
            triton_url: Triton's HTTP address, where the class adapters are deployed and called.
            serving_store: The serving store Triton reads.
            preset: The experiment's starting settings: `default` (a real base) or `toy`.
            settings: Overrides of the preset's settings (see `dreamloom.usecases.augment.AugmentSettings`).
            launcher: Where training runs: `local`, `ray` or `kuberay`.
            train_gpus: GPUs of each teaching step's pod (0 when a Ray cluster trains).
        """
        classes = check_classes(data=data, eval_data=eval_data, preset=preset, settings=settings)
        with dsl.ParallelFor(classes.output, parallelism=4) as class_name:
            # gpus is passed as an argument too: KFP (2.17) does not carry a parameter that only sets a
            # resource into a loop, and the local launcher trains on the pod's GPUs anyway.
            taught = teach_class(
                data=data, class_name=class_name, preset=preset, settings=settings, launcher=launcher, gpus=train_gpus
            )
            trains(talks_to_services(taught), train_gpus, release)
        compared = synthesize_and_compare(
            data=data,
            eval_data=eval_data,
            triton_url=triton_url,
            serving_store=serving_store,
            preset=preset,
            settings=settings,
        ).after(taught)
        serves(talks_to_services(compared), release)

    return augment


augment = augment_pipeline()  # for the release named dreamloom, and local runs
