"""Which way to teach a concept: a recommendation with its reasons, sized for the chosen base.

The trade-offs behind the rules:
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
from dreamloom.sizing import Architecture, Estimate, estimate

ALL_METHODS = ("lora", "dreambooth", "dreambooth-lora", "textual-inversion", "pivotal", "hypernetwork", "controlnet")
MANY_CONCEPTS = 3


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
    estimates = {method: estimate(arch, _config(method)) for method in ALL_METHODS}
    method, reasons = _first_choice(needs)
    notes = []
    method, reasons = _fit_budgets(method, reasons, needs, estimates, notes)
    if needs.spatial_control and (needs.new_to_base or needs.fine_detail):
        notes.append("combine the ControlNet with a LoRA (or pivotal tuning) that carries the concept itself")
    return Recommendation(method, reasons, estimates, notes)


def _first_choice(needs: Needs) -> tuple[str, list[str]]:
    if needs.spatial_control:
        return "controlnet", ["layout, pose or edges must be followed: only a ControlNet conditions on an image"]
    if needs.style and not needs.fine_detail:
        return "hypernetwork", [
            "a style applies everywhere: a hypernetwork transforms every cross-attention",
            "its strength is adjustable when generating; a LoRA is the alternative for sharper styles",
        ]
    if needs.new_to_base and needs.fine_detail:
        if needs.concepts == 1:
            return "dreambooth", [
                "a concept new to the base that needs fine detail: DreamBooth's full UNet gives the highest fidelity",
                "prior preservation keeps the base's idea of the class",
            ]
        return "pivotal", [
            f"{needs.concepts} new concepts needing detail: a full UNet each would not scale",
            "pivotal tuning gives each concept a new token (reach) and a LoRA (detail) at LoRA sizes",
        ]
    if not needs.new_to_base and not needs.fine_detail:
        return "textual-inversion", [
            "the base almost knows the concept: a learned token embedding is enough to steer it",
            "artifacts of a few KB, and the model itself is untouched",
        ]
    if needs.concepts >= MANY_CONCEPTS:
        return "lora", [f"{needs.concepts} concepts: LoRAs are small, hot-swappable and combinable on one base"]
    return "lora", ["a LoRA learns the concept quickly in a small artifact and combines with others"]


# When a budget rules a method out, the next one down keeps most of its strengths.
FALLBACK = {
    "dreambooth": "dreambooth-lora",
    "dreambooth-lora": "pivotal",
    "pivotal": "textual-inversion",
    "lora": "textual-inversion",
    "hypernetwork": "lora",
    "controlnet": None,
    "textual-inversion": None,
}


def _fit_budgets(method, reasons, needs: Needs, estimates: dict[str, Estimate], notes: list[str]):
    while True:
        problem = _over_budget(estimates[method], needs)
        if problem is None:
            return method, reasons
        fallback = FALLBACK[method]
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
