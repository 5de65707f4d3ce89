"""The Kubeflow pipelines, each compiled beside its module (KFP IR YAML, uploadable as is):
personalize (teach, gate, serve), batch_ads (ads for many products), augment (per-class
adapters and the measured gain of synthetic images)."""

from pathlib import Path

NAMES = ("personalize", "batch_ads", "augment")


def compile_all(folder: Path | None = None) -> list[Path]:
    from importlib import import_module

    paths = []
    for name in NAMES:
        module = import_module(f"pipelines.{name}")
        paths.append(module.compile_pipeline(Path(folder) / module.COMPILED.name if folder else module.COMPILED))
    return paths
