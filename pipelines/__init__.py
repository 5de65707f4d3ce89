"""The Kubeflow pipelines, each compiled beside its module (KFP IR YAML, uploadable as is):
personalize (teach, gate, serve), batch_ads (ads for many products), augment (per-class
adapters and the measured gain of synthetic images)."""

from pathlib import Path

NAMES = ("personalize", "batch_ads", "augment")  # module = pipeline function = YAML name


def compile_pipeline(name: str, path: Path | None = None) -> Path:
    from importlib import import_module

    from kfp import compiler

    module = import_module(f"pipelines.{name}")
    path = Path(path or module.COMPILED)
    compiler.Compiler().compile(getattr(module, name), str(path))
    return path


def compile_all(folder: Path | None = None) -> list[Path]:
    return [compile_pipeline(name, Path(folder) / f"{name}.yaml" if folder else None) for name in NAMES]
