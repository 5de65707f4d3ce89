"""New concepts for the toy base: objects it never saw, five pictures each, ready to teach.

``hexagon`` is a new shape (an orange hexagon), ``zigzag`` a new texture (a blue zigzag
circle). ``family`` draws many more, each with at least one attribute the base never saw (a
held-out shape or texture), and ``split_family`` divides them once, by seed, into concepts that
settings are tuned on and concepts that are only reported on. Each is written as a training
folder: five pictures of the object on different backgrounds and at different positions, each
with a caption in the world's grammar where the object is "sks shape" (the rare token plus a
class word, as in DreamBooth).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from dreamloom.toy import world

TRIGGER = "sks"
CLASS_WORD = "shape"
SUBJECT = f"{TRIGGER} {CLASS_WORD}"


@dataclass(frozen=True)
class Concept:
    name: str
    shape: str
    colour: str
    texture: str

    def scenes(self, count: int = 5, seed: int = 0) -> list[world.Scene]:
        """Varied backgrounds and positions, the object always the same."""
        rng = random.Random(seed)
        backgrounds = list(world.BACKGROUNDS)
        positions = list(world.POSITIONS)
        return [
            world.Scene(self.shape, self.colour, self.texture, backgrounds[i % len(backgrounds)], rng.choice(positions))
            for i in range(count)
        ]

    @classmethod
    def of(cls, shape: str, colour: str, texture: str) -> Concept:
        """A concept named after what it is: ``orange-plain-hexagon``."""
        return cls(f"{colour}-{texture}-{shape}", shape, colour, texture)

    @property
    def attributes(self) -> dict[str, str]:
        """What the attribute classifiers should read back from a picture of it."""
        return {"shape": self.shape, "colour": self.colour, "texture": self.texture}


CONCEPTS = {
    "hexagon": Concept("hexagon", "hexagon", "orange", "plain"),
    "zigzag": Concept("zigzag", "circle", "blue", "zigzag"),
}


def family(count: int = 12, seed: int = 0) -> list[Concept]:
    """``count`` distinct new concepts, the same for the same seed: every combination of shape,
    colour and texture with a held-out shape or texture (so the base cannot already draw it),
    drawn at random. ``hexagon`` (the README's original concept) is left out: its settings were
    chosen on it."""
    shapes = world.SHAPES + world.NEW_SHAPES
    textures = world.TEXTURES + world.NEW_TEXTURES
    candidates = [
        Concept.of(shape, colour, texture)
        for shape in shapes
        for colour in world.COLOURS
        for texture in textures
        if (shape in world.NEW_SHAPES or texture in world.NEW_TEXTURES)
        and (shape, colour, texture) != (CONCEPTS["hexagon"].shape, CONCEPTS["hexagon"].colour, "plain")
    ]
    if not 1 <= count <= len(candidates):
        raise ValueError(f"a family has 1 to {len(candidates)} concepts, not {count}")
    return random.Random(seed).sample(candidates, count)


def split_family(concepts: list[Concept], tuning: int, seed: int = 0) -> tuple[list[Concept], list[Concept]]:
    """(tuning, evaluation): ``tuning`` concepts chosen by ``seed`` to pick settings on; the rest
    are only ever reported on."""
    if not 1 <= tuning < len(concepts):
        raise ValueError(f"keep 1 to {len(concepts) - 1} of {len(concepts)} concepts for tuning, not {tuning}")
    chosen = set(random.Random(seed).sample(range(len(concepts)), tuning))
    return [c for i, c in enumerate(concepts) if i in chosen], [c for i, c in enumerate(concepts) if i not in chosen]


# Prompts for evaluating a taught concept: the subject in settings the base knows how to draw.
EVALUATION_PROMPTS = (
    "a {} on a gray background",
    "a {} on a black background, top left",
    "a {} on a white background, bottom right",
    "a {} on a beige background, top right",
    "two {} on a white background",
)
INSTANCE_PROMPT = f"a {SUBJECT} on a white background"


def write_concept(concept: str | Concept, folder: Path, count: int = 5, subject: str = SUBJECT) -> Path:
    """The concept's (a ``Concept`` or a name in ``CONCEPTS``) pictures and captions as a training folder."""
    concept = CONCEPTS[concept] if isinstance(concept, str) else concept
    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(concept.scenes(count)):
        world.render(scene, seed=index).save(folder / f"{concept.name}_{index}.png")
        (folder / f"{concept.name}_{index}.txt").write_text(scene.caption(subject=subject))
    return folder


def write_class_pictures(folder: Path, count: int = 20, seed: int = 0) -> Path:
    """Pictures of the class itself for prior preservation (``prior.class_data``), as users give
    DreamBooth real regularization images: shapes the base knows, in every colour and texture, on
    every background, each captioned like the instance pictures with the bare class word ("a shape
    on a gray background, top left")."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene = world.random_scene(rng)
        world.render(scene, seed=index).save(folder / f"class_{index}.png")
        (folder / f"class_{index}.txt").write_text(scene.caption(subject=CLASS_WORD))
    return folder
