"""Measuring toy models with the toy evaluator: how well a base follows prompts, how faithfully a
taught model draws its concept, and how closely a ControlNet follows a layout."""

from __future__ import annotations

import dataclasses
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamloom.toy import world
from dreamloom.toy.concepts import EVALUATION_PROMPTS, Concept
from dreamloom.toy.encoders import named_attributes
from dreamloom.toy.evaluator import ATTRIBUTES, AttributeTally, load, to_pixels

GROUPS = ("shape", "colour", "background", "texture")


@torch.no_grad()
def prompt_following(
    pipe, count: int = 60, seed: int = 777, steps: int = 20, guidance: float = 5.0
) -> dict[str, float]:
    """Accuracy per attribute (and their mean, ``overall``) over ``count`` random seen scenes."""
    classifier, _ = load()
    rng = random.Random(seed)
    scenes = [world.random_scene(rng) for _ in range(count)]
    tally = AttributeTally()
    for start in range(0, count, 10):
        chunk = scenes[start : start + 10]
        images = _render(pipe, [scene.caption() for scene in chunk], seed + start, steps, guidance)
        tally.add(classifier(to_pixels(images)), chunk)
    accuracy = tally.accuracy()
    accuracy["overall"] = sum(accuracy[name] for name in GROUPS) / len(GROUPS)
    return accuracy


CONCEPT_GROUPS = ("shape", "colour", "texture")
PROMPT_GROUPS = ("background", "position", "count")


@dataclass
class ConceptFidelity:
    subject: float  # mean cosine of the subject embedding to the reference pictures (DINO's role)
    prompt: float  # share of the prompts' other attributes (background, position, count) drawn right
    reference_ceiling: float  # the references' mean similarity to each other: what "the same object" scores
    # What the attribute classifiers read back of the concept: the share of pictures with its
    # shape, colour, texture right, and with all three right ("all"); empty without a concept.
    readback: dict[str, float] = field(default_factory=dict)
    reference_readback: float = 1.0  # "all" on the reference pictures themselves
    # The ceilings a latent diffusion model on this VAE can reach: the references after an
    # encode-decode round trip (the toy VAE cannot draw the held-out zigzag texture, for one),
    # their subject cosine to the references and their read-back of all three.
    reachable_subject: float = 1.0
    reachable_readback: float = 1.0
    prompt_by_attribute: dict[str, float] = field(default_factory=dict)  # background, position, count
    images: list[Image.Image] = field(default_factory=list, repr=False)


@torch.no_grad()
def concept_fidelity(
    pipe,
    references: list[Image.Image],
    subject: str,
    prompts: tuple[str, ...] = EVALUATION_PROMPTS,
    images_per_prompt: int = 4,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 5.0,
    concept: Concept | None = None,
    **generation,
) -> ConceptFidelity:
    """Subject and prompt fidelity of ``pipe`` drawing ``subject`` in the world's settings, and,
    given the ``concept`` it should draw, how often the classifiers read that concept back.

    Prompt fidelity reads the prompt without the subject (whose words the world does not know)
    and checks each named background, position and count with the attribute classifiers.
    """
    classifier, embedder = load()
    references_pixels = to_pixels(references)
    references_embedded = embedder(references_pixels)
    subject_scores, prompt_scores, images = [], [], []
    concept_hits: dict[str, list[bool]] = {group: [] for group in (*CONCEPT_GROUPS, "all")} if concept else {}
    prompt_hits: dict[str, list[bool]] = {group: [] for group in PROMPT_GROUPS}
    for template in prompts:
        named = named_attributes(template.format(""))
        batch = _render(pipe, [template.format(subject)] * images_per_prompt, seed, steps, guidance, **generation)
        pixels = to_pixels(batch)
        subject_scores.append(float((embedder(pixels) @ references_embedded.T).mean()))
        predicted = _read(classifier, pixels)
        for index in range(len(batch)):
            hits = {group: predicted[group][index] == value for group, value in named.items()}
            prompt_scores.append(sum(hits.values()) / len(hits) if hits else 1.0)
            for group, hit in hits.items():
                if group in prompt_hits:
                    prompt_hits[group].append(hit)
            if concept:
                right = {group: predicted[group][index] == concept.attributes[group] for group in CONCEPT_GROUPS}
                for group, hit in right.items():
                    concept_hits[group].append(hit)
                concept_hits["all"].append(all(right.values()))
        images.extend(batch)
    similarity = references_embedded @ references_embedded.T
    count = len(references)
    ceiling = float((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1)))
    round_trip = _vae_round_trip(pipe, references_pixels)
    reachable_subject = float((embedder(round_trip) @ references_embedded.T).mean())
    reference_readback = reachable_readback = 1.0
    if concept:
        reference_readback = _share_read_right(_read(classifier, references_pixels), concept)
        reachable_readback = _share_read_right(_read(classifier, round_trip), concept)
    return ConceptFidelity(
        subject=statistics.fmean(subject_scores),
        prompt=statistics.fmean(prompt_scores),
        reference_ceiling=ceiling,
        readback={group: statistics.fmean(hits) for group, hits in concept_hits.items()},
        reference_readback=reference_readback,
        reachable_subject=reachable_subject,
        reachable_readback=reachable_readback,
        prompt_by_attribute={group: statistics.fmean(hits) for group, hits in prompt_hits.items() if hits},
        images=images,
    )


def _vae_round_trip(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` (-1..1) encoded and decoded by the pipeline's VAE: what its latents can hold."""
    vae = pipe.vae
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
    return vae.decode(latents).sample.float().clamp(-1, 1).cpu()


def _share_read_right(read: dict[str, list[str]], concept: Concept) -> float:
    count = len(read["shape"])
    return statistics.fmean(
        all(read[group][i] == concept.attributes[group] for group in CONCEPT_GROUPS) for i in range(count)
    )


def _read(classifier, pixels: torch.Tensor) -> dict[str, list[str]]:
    """The attribute values the classifiers see in each picture, by group."""
    return {
        group: [ATTRIBUTES[group][int(i)] for i in logits.argmax(-1)] for group, logits in classifier(pixels).items()
    }


MIN_GAP = 0.2  # a ceiling closer than this to the base makes the lift noise (5 reference pictures)


def normalized_lift(score: float, base: float, ceiling: float) -> float:
    """How much of the way from the base's score to the ceiling a taught model went: 0 at the base,
    1 at the ceiling (negative below the base), so concepts of different difficulty average fairly."""
    if ceiling - base < MIN_GAP:
        return float("nan")  # too little within reach to normalize by (the base draws it, or the VAE cannot)
    return (score - base) / (ceiling - base)


def layout_scenes(count: int = 8, seed: int = 4242) -> list[tuple[str, Image.Image]]:
    """Single seen objects placed anywhere, at any size, as (caption, picture). The caption says
    what but not where ("a red square on a white background"): only the edges carry the layout."""
    rng = random.Random(seed)
    layouts = []
    for index in range(count):
        scene = dataclasses.replace(world.random_scene(rng), count=1, position="center")
        layout = (rng.uniform(18, 46), rng.uniform(18, 46), rng.uniform(9, 16))
        layouts.append((scene.caption(), world.render(scene, seed + index, layout)))
    return layouts


def write_layout_scenes(folder: Path, count: int = 64, seed: int = 99) -> Path:
    """Layout scenes with their captions as a ControlNet training folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (caption, picture) in enumerate(layout_scenes(count, seed)):
        picture.save(folder / f"scene_{index}.png")
        (folder / f"scene_{index}.txt").write_text(caption)
    return folder


@torch.no_grad()
def layout_adherence(
    pipe, layouts: list[tuple[str, Image.Image]], control: bool, seed: int = 0, steps: int = 20, guidance: float = 5.0
) -> tuple[float, list[Image.Image]]:
    """Mean edge F1 between each generated picture and the layout it was asked to follow.

    With ``control`` the canny edges of each layout picture condition a ControlNet pipeline; without,
    the same captions alone give the floor (what the prompt's position words achieve by themselves).
    """
    from dreamloom.data.conditions import extract

    scores, images = [], []
    for index, (caption, picture) in enumerate(layouts):
        edges = extract(picture, "canny")
        extra = {"image": edges} if control else {}
        image = _render(pipe, [caption], seed + index, steps, guidance, **extra)[0]
        scores.append(edge_f1(extract(image, "canny"), edges))
        images.append(image)
    return statistics.fmean(scores), images


def edge_f1(predicted: Image.Image, target: Image.Image, tolerance: int = 1) -> float:
    """F1 of edge pixels, an edge counting as matched within ``tolerance`` pixels (the usual
    boundary F-measure with a small distance tolerance)."""
    import cv2

    predicted_edges = np.asarray(predicted.convert("L")) > 127
    target_edges = np.asarray(target.convert("L")) > 127
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_target = cv2.dilate(target_edges.astype(np.uint8), kernel) > 0
    near_predicted = cv2.dilate(predicted_edges.astype(np.uint8), kernel) > 0
    if not predicted_edges.any() or not target_edges.any():
        return 0.0
    precision = (predicted_edges & near_target).sum() / predicted_edges.sum()
    recall = (target_edges & near_predicted).sum() / target_edges.sum()
    return float(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


def _render(pipe, prompts: list[str], seed: int, steps: int, guidance: float, **extra) -> list[Image.Image]:
    return pipe(
        prompts,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=world.SIZE,
        width=world.SIZE,
        generator=[torch.Generator().manual_seed(seed + index) for index in range(len(prompts))],
        **extra,
    ).images
