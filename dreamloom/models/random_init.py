"""Bases of the real architectures with random weights, built offline from the shipped configs.

``--base-model sd15-random`` (or ``sd21-random``, ``sdxl-random``) is a diffusers folder with every
module of Stable Diffusion 1.5 (2.1 with v-prediction, SDXL) at its published size, initialised
from a seed instead of downloaded: the paths users run (memory, speed, shapes, file layouts,
loading in diffusers) are exercised for real where no weights can be fetched. It generates noise,
so everything that records a base also records that its weights are random
(``BaseModelRef.random_weights``, the manifest, MLflow's ``dreamloom.base_model_weights`` tag).

Weights are stored in bf16 (SD 1.5: about 2.1 GB, SD 2.1: 2.6 GB, SDXL: 6.9 GB) and cast to the
run's dtype on load. The same seed gives the same weights; each is built once into the cache.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from dreamloom.models import architectures
from dreamloom.models.cached import cached_pipeline_folder

RANDOM_BASES = {"sd15-random": "sd15", "sd21-random": "sd21", "sdxl-random": "sdxl"}
MARKER = "dreamloom-random-weights.json"
# Bump when the builder changes, so that caches built by older code are not reused.
BUILDER_VERSION = 1
DEFAULT_SEED = 0
STORED_DTYPE = torch.bfloat16


def ensure_random_base(spec: str, seed: int = DEFAULT_SEED) -> Path:
    """The folder of the random-weight base ``spec``, building it into the cache on first use."""
    if spec not in RANDOM_BASES:
        raise ValueError(f"unknown random base {spec!r}; choose one of {', '.join(RANDOM_BASES)}")
    return cached_pipeline_folder(
        f"{spec}-v{BUILDER_VERSION}-seed{seed}",
        lambda folder: save_random_base(folder, RANDOM_BASES[spec], seed),
        announce=f"building {spec} (the real architecture with random weights, stored in bf16)",
    )


def save_random_base(folder: Path, architecture: str, seed: int = DEFAULT_SEED, entry: dict | None = None) -> None:
    """Write a random-weight pipeline of ``architecture`` (or of ``entry``'s configs) to ``folder``."""
    entry = entry or architectures.KNOWN[architecture]
    pipe = build_random_pipeline(entry, seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    marker = {"architecture": architecture, "seed": seed, "builder_version": BUILDER_VERSION, "weights": "random"}
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def build_random_pipeline(entry: dict, seed: int = DEFAULT_SEED):
    """Every module of the architecture initialised from ``seed`` (one seed per module, so that
    a change to one module's config leaves the others' weights as they were), in bf16."""
    with _default_dtype(STORED_DTYPE):  # half the memory while building SDXL's 3.5 B parameters
        torch.manual_seed(seed)
        unet = architectures.build_unet(entry["unet"])
        torch.manual_seed(seed + 1)
        vae = architectures.build_vae(entry["vae"])
        encoders = []
        for index, config in enumerate(entry["text_encoders"]):
            torch.manual_seed(seed + 2 + index)
            encoders.append(architectures.build_text_encoder(config))
    tokenizers, scheduler = architectures.build_tokenizers(entry), architectures.build_scheduler(entry)
    return architectures.assemble_pipeline(entry["family"], unet, vae, encoders, tokenizers, scheduler)


def is_random_weights(folder: str | Path) -> bool:
    """Whether a pipeline folder holds random weights built by dreamloom (not a trained model)."""
    return (Path(folder) / MARKER).is_file()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
