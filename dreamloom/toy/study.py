"""Teaching the toy base new concepts as the benches and tests do: each method's settings for a
5.4 M-parameter UNet, the run config, the small sweep tried on tuning concepts, and how a taught
model is scored against the base.

A result is read three ways (``Scores``): the subject embedding's cosine to the five references
(DINO's role), the attribute classifiers' read-back of the concept itself (shape, colour, texture,
all three) and of the prompt around it (background, position, count). Each concept score also
comes as a normalized lift, (score - base) / (ceiling - base), so that concepts of different
difficulty average fairly. The ceiling is what a model drawing through the toy VAE can reach at
all: the references after an encode-decode round trip. The toy VAE was trained on the seen
textures and cannot hold the held-out zigzag (read back on a fifth of round-tripped pictures, or
none); measured against the references themselves, every zigzag concept would count as a method's
failure.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from dreamloom.toy.concepts import SUBJECT, Concept, write_class_pictures, write_concept
from dreamloom.toy.measure import ConceptFidelity, normalized_lift

SUBJECT_METHODS = ("lora", "dreambooth", "dreambooth-lora", "textual-inversion", "pivotal", "hypernetwork")
PLACEHOLDER = "<sks-shape>"  # the embedding methods' new token (the others use "sks shape")
EMBEDDING_METHODS = ("textual-inversion", "pivotal")
PRIOR = {"prior.class_prompt": "a shape on a white background", "prior.num_class_images": 20}
# Settings per method for the toy UNet: learning rates are higher than SD 1.5's.
METHOD_SETTINGS: dict[str, dict] = {
    "lora": {"lora.rank": 8, "optimizer.learning_rate": 1e-3},
    "dreambooth": {**PRIOR, "optimizer.learning_rate": 1e-4},
    "dreambooth-lora": {**PRIOR, "lora.rank": 8, "optimizer.learning_rate": 1e-3},
    "textual-inversion": {
        "textual_inversion.placeholder_token": PLACEHOLDER,
        "textual_inversion.initializer_token": "shape",
        "textual_inversion.num_vectors": 2,
        "optimizer.learning_rate": 5e-3,
    },
    "pivotal": {
        "textual_inversion.placeholder_token": PLACEHOLDER,
        "textual_inversion.initializer_token": "shape",
        "textual_inversion.num_vectors": 2,
        "textual_inversion.learning_rate": 5e-3,
        "lora.rank": 8,
        "optimizer.learning_rate": 1e-3,
    },
    "hypernetwork": {"optimizer.learning_rate": 1e-3},
    "controlnet": {"controlnet.condition": "canny", "optimizer.learning_rate": 1e-3},
}
CLASS_PICTURES = "class"  # the teaching data's pictures of the class, for ``prior.class_data``
# What bench/family.py's sweep chose on the tuning concepts (docs/evidence/family/), on top of
# METHOD_SETTINGS.
CHOSEN_SETTINGS: dict[str, dict] = {
    "lora": {"optimizer.learning_rate": 2e-3, "training.steps": 600},
    "dreambooth": {
        "optimizer.learning_rate": 2e-4,
        "training.steps": 1200,
        "prior.class_data": CLASS_PICTURES,
        "dreambooth.train_text_encoder": True,
    },
    "dreambooth-lora": {"optimizer.learning_rate": 2e-3},
    "textual-inversion": {"optimizer.learning_rate": 2.5e-3, "training.steps": 1200},
    "pivotal": {"textual_inversion.learning_rate": 5e-3, "training.steps": 600},
    "hypernetwork": {"optimizer.learning_rate": 5e-4, "training.steps": 600},
}
LEARNING_RATE = {"pivotal": "textual_inversion.learning_rate"}  # the rate that teaches the concept
CAPACITY = {  # rank or vectors: what holds the concept
    "lora": ("lora.rank", 16),
    "dreambooth-lora": ("lora.rank", 16),
    "pivotal": ("lora.rank", 16),
    "textual-inversion": ("textual_inversion.num_vectors", 4),
    "hypernetwork": ("hypernetwork.layer_structure", [1.0, 4.0, 1.0]),
}
TEXT_ENCODER = {  # the methods that can also train the text encoder (as diffusers' --train_text_encoder)
    "lora": "lora.train_text_encoder",
    "dreambooth": "dreambooth.train_text_encoder",
    "dreambooth-lora": "lora.train_text_encoder",
}
RATE_FACTORS = (0.5, 1.0, 2.0)  # the first stage's learning rates, around the method's default
RATES_PAST_EDGE = 2  # how many more rates the sweep tries while the best is still the grid's edge
MAX_STEPS_FACTOR = 4  # longer runs are followed up to this many times the default steps (a power of 2)
PRIOR_WEIGHTS = (0.5, 0.25)  # for the methods with prior preservation: does the class prior cost the concept?
PROMPT_FLOOR = 0.9  # a setting that loses the prompt is not chosen, however faithful its subject


def subject_for(method: str) -> str:
    return PLACEHOLDER if method in EMBEDDING_METHODS else SUBJECT


def write_teaching_data(concept: Concept, folder: Path) -> Path:
    """The concept's pictures captioned for every method: ``subject/`` with "sks shape",
    ``placeholder/`` with the embedding methods' token; and ``class/``, pictures of the class for
    prior preservation."""
    write_concept(concept, folder / "subject")
    write_concept(concept, folder / "placeholder", subject=PLACEHOLDER)
    write_class_pictures(folder / CLASS_PICTURES)
    return folder


def run_document(
    method: str, data: Path, output: Path, steps: int, batch_size: int, seed: int = 0, **overrides
) -> dict:
    """The run config (as ``load_run_config``'s dotted document) ``method`` teaches the concept in
    ``data`` (``write_teaching_data``) with; ``prior.class_data`` names a folder in ``data``."""
    embedding = method in EMBEDDING_METHODS
    if "prior.class_data" in overrides:
        overrides["prior.class_data"] = str(data / overrides["prior.class_data"])
    return {
        "method": method,
        "base_model": "toy",
        "data.path": str(data / ("placeholder" if embedding else "subject")),
        "data.instance_prompt": f"a {subject_for(method)} on a white background",
        "data.resolution": 64,
        "output": str(output),
        "training.steps": steps,
        "training.batch_size": batch_size,
        "training.seed": seed,
        "training.checkpoint_every": 0,
        "validation.final_grid": False,
        **METHOD_SETTINGS[method],
        **overrides,
    }


def sweep_stages(method: str, steps: int) -> list[list[dict]]:
    """The settings tried on the tuning concepts, in stages: learning rates at half, once and twice
    the default (and past the edge, ``rate_past_edge``); then, on top of the best, twice the steps
    and twice the capacity (rank or vectors); then, with prior preservation, a lighter prior or
    pictures of the class instead of the base's; then, where the method can, training the text
    encoder too."""
    key = rate_key(method)
    rate = METHOD_SETTINGS[method][key]
    stages = [[{key: rate * factor} for factor in RATE_FACTORS], [{}, {"training.steps": steps * 2}]]
    if method in CAPACITY:
        capacity_key, value = CAPACITY[method]
        stages[1].append({capacity_key: value})
    if METHOD_SETTINGS[method].get("prior.class_prompt"):
        lighter = [{"prior.weight": weight} for weight in PRIOR_WEIGHTS]
        stages.append([{}, *lighter, {"prior.class_data": CLASS_PICTURES}])
    if method in TEXT_ENCODER:
        stages.append([{}, {TEXT_ENCODER[method]: True}])
    return stages


def rate_key(method: str) -> str:
    return LEARNING_RATE.get(method, "optimizer.learning_rate")


def past_edge(method: str, stage: int, candidates: list[tuple[dict, list[Scores]]], best: dict, steps: int):
    """One more setting for ``stage`` when its best is the edge of what was tried: a rate beyond
    the first stage's grid, or longer training in the second; None when the best lies inside."""
    if stage == 0:
        return rate_past_edge(method, candidates, best)
    if stage == 1:
        return steps_past_edge(candidates, best, steps)
    return None


def steps_past_edge(candidates: list[tuple[dict, list[Scores]]], best: dict, steps: int) -> dict | None:
    """Twice the steps again when the longest run tried is the best and strictly better than the
    stage's starting point (the first candidate), up to MAX_STEPS_FACTOR times ``steps``."""
    summary = _summary(candidates)
    longest = max(settings.get("training.steps", steps) for settings, _, _ in summary)
    if best.get("training.steps", steps) != longest or longest * 2 > steps * MAX_STEPS_FACTOR:
        return None
    best_lift = next(lift for settings, lift, _ in summary if settings == best)
    if best_lift > summary[0][1]:
        return {**best, "training.steps": longest * 2}
    return None


def rate_past_edge(method: str, candidates: list[tuple[dict, list[Scores]]], best: dict) -> dict | None:
    """The next learning rate to try when the best of the first stage is the highest (lowest) one
    tried and strictly better than its neighbour: twice (half) that rate, so that the grid's edge does
    not choose for us. None when the best lies inside, ties with its neighbour, or RATES_PAST_EDGE
    more rates were tried already."""
    if len(candidates) >= len(RATE_FACTORS) + RATES_PAST_EDGE:
        return None
    key = rate_key(method)
    by_rate = sorted((settings[key], lift) for settings, lift, _ in _summary(candidates))
    for edge, neighbour, factor in ((by_rate[-1], by_rate[-2], 2.0), (by_rate[0], by_rate[1], 0.5)):
        if best[key] == edge[0] and edge[1] > neighbour[1]:
            return {key: edge[0] * factor}
    return None


@dataclass
class Scores:
    """One taught model on one concept, against the base on the same prompts and seeds."""

    subject: float
    subject_lift: float
    readback: dict[str, float]  # shape, colour, texture, all
    readback_lift: float  # of "all", towards what the VAE lets any model reach (nan: nothing reachable)
    prompt: float
    prompt_by_attribute: dict[str, float]

    def __post_init__(self):
        # A concept counts for at most the whole way to its ceiling: the ceiling is estimated from
        # five round-tripped references, and a concept whose estimate is low (a zigzag the VAE
        # barely holds) would otherwise count three times over in a mean.
        self.subject_lift = capped(self.subject_lift)
        self.readback_lift = capped(self.readback_lift)

    @classmethod
    def of(cls, taught: ConceptFidelity, base: ConceptFidelity) -> Scores:
        return cls(
            subject=taught.subject,
            subject_lift=normalized_lift(taught.subject, base.subject, base.reachable_subject),
            readback=taught.readback,
            readback_lift=normalized_lift(taught.readback["all"], base.readback["all"], base.reachable_readback),
            prompt=taught.prompt,
            prompt_by_attribute=taught.prompt_by_attribute,
        )

    def as_dict(self) -> dict:
        return rounded(asdict(self))


def choose(candidates: list[tuple[dict, list[Scores]]]) -> tuple[dict, str]:
    """The candidate settings with the best mean read-back lift among those that keep the prompt
    (mean prompt fidelity >= PROMPT_FLOOR), with why; if none does, the one that keeps it best."""
    summary = _summary(candidates)
    keeping = [row for row in summary if row[2] >= PROMPT_FLOOR]
    if keeping:
        settings, lift, prompt = max(keeping, key=lambda row: row[1])
        return settings, f"best read-back lift {lift:.3f} with prompt fidelity {prompt:.3f} >= {PROMPT_FLOOR}"
    settings, lift, prompt = max(summary, key=lambda row: row[2])
    return (
        settings,
        f"no setting kept prompt fidelity >= {PROMPT_FLOOR}; best prompt fidelity {prompt:.3f} (lift {lift:.3f})",
    )


def _summary(candidates: list[tuple[dict, list[Scores]]]) -> list[tuple[dict, float, float]]:
    """(settings, mean read-back lift, mean prompt fidelity) per candidate."""
    return [
        (settings, mean([s.readback_lift for s in scores]), mean([s.prompt for s in scores]))
        for settings, scores in candidates
    ]


def capped(lift: float) -> float:
    return lift if math.isnan(lift) else min(lift, 1.0)


def mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else float("nan")


def spread(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.stdev(finite) if len(finite) > 1 else 0.0


def rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    return value
