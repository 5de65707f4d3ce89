"""New concepts for the toy base: objects it never saw, five pictures each, ready to teach.

``hexagon`` is a new shape (an orange hexagon), ``zigzag`` a new texture (a blue zigzag
circle). Each is written as a training folder: five pictures of the object on different
backgrounds and at different positions, each with a caption in the world's grammar where the
object is "sks shape" (the rare token plus a class word, as in DreamBooth).
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


CONCEPTS = {
    "hexagon": Concept("hexagon", "hexagon", "orange", "plain"),
    "zigzag": Concept("zigzag", "circle", "blue", "zigzag"),
}

# Prompts for evaluating a taught concept: the subject in settings the base knows how to draw.
EVALUATION_PROMPTS = (
    "a {} on a gray background",
    "a {} on a black background, top left",
    "a {} on a white background, bottom right",
    "a {} on a beige background, top right",
    "two {} on a white background",
)
INSTANCE_PROMPT = f"a {SUBJECT} on a white background"


def write_concept(name: str, folder: Path, count: int = 5, subject: str = SUBJECT) -> Path:
    """The concept's pictures and captions as a training folder."""
    concept = CONCEPTS[name]
    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(concept.scenes(count)):
        world.render(scene, seed=index).save(folder / f"{name}_{index}.png")
        (folder / f"{name}_{index}.txt").write_text(scene.caption(subject=subject))
    return folder
