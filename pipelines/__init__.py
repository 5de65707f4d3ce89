"""The Kubeflow pipelines, each compiled beside its module (KFP IR YAML, uploadable as is):
personalize (teach, gate, serve), batch_ads (ads for many products), augment (per-class
adapters and the measured gain of synthetic images).

The YAML beside each module is for a chart release named ``dreamloom``; ``compile_pipeline`` with
another release's names writes one whose steps mount that release's claims."""

from pathlib import Path

from dreamloom.k8s.names import DEFAULT_RELEASE, ReleaseNames

NAMES = ("personalize", "batch_ads", "augment")  # module = pipeline function = YAML name


def compile_pipeline(name: str, path: Path | None = None, release: ReleaseNames = DEFAULT_RELEASE) -> Path:
    from importlib import import_module

    from kfp import compiler

    module = import_module(f"pipelines.{name}")
    path = Path(path or module.COMPILED)
    compiler.Compiler().compile(getattr(module, f"{name}_pipeline")(release), str(path))
    return path


def compile_all(folder: Path | None = None, release: ReleaseNames = DEFAULT_RELEASE) -> list[Path]:
    return [compile_pipeline(name, Path(folder) / f"{name}.yaml" if folder else None, release) for name in NAMES]
