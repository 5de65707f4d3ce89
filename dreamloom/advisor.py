"""Which way to teach a concept: a recommendation with its reasons, sized for the chosen base.

Each method says when it suits a set of needs (``TrainingMethod.suitability``: a priority and
its reasons) and which method is the nearest one when it is over a budget (``fallback``); the
advisor picks the most suitable, sizes every method on the architecture, and walks the fallbacks
until the choice fits the storage and GPU budgets. The trade-offs behind the methods' rules:
- DreamBooth reaches the highest fidelity on concepts the base has never seen, but it is a full
  UNet per concept (GBs) and needs the most GPU memory.
- Textual Inversion makes a few-KB artifact but can only steer toward what the base almost knows.
- LoRA is small, fast to train, hot-swappable and combinable: the default for many concepts.
- Pivotal tuning (a new token plus a LoRA) reaches new concepts at LoRA sizes.
- Hypernetworks suit styles: one small module applied to every cross-attention, with a strength.
- ControlNet is for spatial control: layouts, poses, edges, masks to follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dreamloom.config import load_run_config
from dreamloom.methods import METHODS
from dreamloom.sizing import Architecture, Estimate, estimate

# What Needs asks, as people are asked it (the CLI at its prompt, the studio beside its checkboxes).
QUESTIONS = {
    "concepts": ("How many concepts will you teach", int),
    "fine_detail": ("Does fine detail matter (logos, faces, stitching)", bool),
    "new_to_base": ("Is the concept new to the base model (it cannot draw it today)", bool),
    "style": ("Is it a style rather than an object", bool),
    "spatial_control": ("Must images follow a layout, pose or sketch", bool),
}


@dataclass(frozen=True)
class Needs:
    concepts: int = 1
    fine_detail: bool = False
    new_to_base: bool = False
    style: bool = False
    spatial_control: bool = False
    storage_mb_per_concept: float | None = None
    gpu_memory_gb: float | None = None


@dataclass
class Recommendation:
    method: str
    reasons: list[str]
    estimates: dict[str, Estimate]
    notes: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> Estimate:
        return self.estimates[self.method]


def recommend(needs: Needs, arch: Architecture) -> Recommendation:
    estimates = {name: estimate(arch, _config(name)) for name in METHODS}
    suited = [(fit, name) for name, method in METHODS.items() if (fit := method.suitability(needs)) is not None]
    if not suited:
        raise ValueError("no method suits these needs")  # LoRA suits every need; a registry without it is a bug
    fit, method = max(suited, key=lambda pair: pair[0].priority)
    notes = list(fit.notes)
    method, reasons = _fit_budgets(method, list(fit.reasons), needs, estimates, notes)
    return Recommendation(method, reasons, estimates, notes)


def _fit_budgets(method, reasons, needs: Needs, estimates: dict[str, Estimate], notes: list[str]):
    while True:
        problem = _over_budget(estimates[method], needs)
        if problem is None:
            return method, reasons
        fallback = METHODS[method].fallback
        if fallback is None:
            notes.append(f"{method} {problem}; no smaller method does its job, so it stays the choice")
            return method, reasons
        reasons = [f"{method} {problem}; {fallback} is the nearest method that fits", *reasons]
        method = fallback


def _over_budget(chosen: Estimate, needs: Needs) -> str | None:
    budget_mb = needs.storage_mb_per_concept
    if budget_mb is not None and chosen.artifact_bytes > budget_mb * 2**20:
        return f"needs {chosen.artifact_bytes / 2**20:,.1f} MB per concept, over the {budget_mb:g} MB budget"
    if needs.gpu_memory_gb is not None and chosen.training_state_bytes > needs.gpu_memory_gb * 2**30:
        gb = chosen.training_state_bytes / 2**30
        return f"needs {gb:,.1f} GB for weights, gradients and optimizer state, over the {needs.gpu_memory_gb:g} GB GPU"
    return None


def _config(method: str):
    document = {"method": method, "data.path": ".", "data.instance_prompt": "a photo of <concept>", "output": "."}
    document["prior.enabled"] = False
    return load_run_config(None, document)
