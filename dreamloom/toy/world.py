"""A procedural world of 64 px pictures with exact captions.

Each picture shows one or two copies of an object (a shape with a colour and a texture) on a
plain background, at a position; its caption names all of it, e.g. "a red striped triangle on a
blue background, top left" or "two green dotted circles on a gray background". The same scene and
seed always give the same pixels. Some shapes and textures are held out of the base model's
training, so that they can be taught to it later as new concepts.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
_SUPERSAMPLE = 4  # drawn at 4x and reduced, for clean edges

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
NEW_SHAPES = ("hexagon", "heart")  # never in the base's training set
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (45, 85, 215),
    "yellow": (235, 200, 35),
    "purple": (135, 55, 175),
    "orange": (240, 130, 25),
}
BACKGROUNDS = {"white": (244, 244, 240), "gray": (125, 125, 125), "black": (22, 22, 26), "beige": (222, 202, 165)}
TEXTURES = ("plain", "striped", "dotted", "checkered")
NEW_TEXTURES = ("zigzag",)
POSITIONS = {
    "center": (32, 32),
    "top left": (19, 19),
    "top right": (45, 19),
    "bottom left": (19, 45),
    "bottom right": (45, 45),
}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    texture: str
    background: str
    position: str = "center"  # ignored when count is 2 (the copies stand side by side)
    count: int = 1

    def caption(self, subject: str | None = None) -> str:
        """The scene in words; ``subject`` replaces "colour texture shape" (e.g. "sks object")."""
        thing = subject or " ".join(
            w for w in (self.colour, "" if self.texture == "plain" else self.texture, self.shape) if w
        )
        if self.count == 2:
            plural = thing if subject else _plural(thing)
            return f"two {plural} on a {self.background} background"
        where = "" if self.position == "center" else f", {self.position}"
        article = "an" if thing[0] in "aeiou" else "a"
        return f"{article} {thing} on a {self.background} background{where}"

    def to_dict(self) -> dict:
        return asdict(self)


def _plural(noun_phrase: str) -> str:
    head, _, last = noun_phrase.rpartition(" ")
    last = last + "es" if last.endswith(("s", "x")) else last + "s"
    return f"{head} {last}".strip()


def random_scene(rng: random.Random, shapes=SHAPES, textures=TEXTURES) -> Scene:
    count = 2 if rng.random() < 0.2 else 1
    return Scene(
        shape=rng.choice(shapes),
        colour=rng.choice(list(COLOURS)),
        texture=rng.choice(textures),
        background=rng.choice(list(BACKGROUNDS)),
        position=rng.choice(list(POSITIONS)) if count == 1 else "center",
        count=count,
    )


def render(scene: Scene, seed: int = 0, layout: tuple[float, float, float] | None = None) -> Image.Image:
    """The scene at 64x64 RGB; ``seed`` jitters size, rotation and placement a little.

    ``layout`` (centre x, centre y, radius in pixels) places a single object anywhere instead
    of at its named position: layouts a caption cannot describe, for ControlNet.
    """
    rng = random.Random(seed)
    big = SIZE * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    placements = [layout] if layout and scene.count == 1 else _placements(scene, rng)
    for cx, cy, radius in placements:
        angle = rng.uniform(-12, 12)
        mask = Image.new("L", (big, big), 0)
        _draw_shape(
            ImageDraw.Draw(mask), scene.shape, cx * _SUPERSAMPLE, cy * _SUPERSAMPLE, radius * _SUPERSAMPLE, angle
        )
        canvas.paste(_textured(scene.colour, scene.texture, big, rng), (0, 0), mask)
    return canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _placements(scene: Scene, rng: random.Random) -> list[tuple[float, float, float]]:
    if scene.count == 2:
        radius = rng.uniform(10.0, 11.5)
        return [
            (18 + rng.uniform(-1.5, 1.5), 32 + rng.uniform(-3, 3), radius),
            (46 + rng.uniform(-1.5, 1.5), 32 + rng.uniform(-3, 3), radius),
        ]
    cx, cy = POSITIONS[scene.position]
    radius = rng.uniform(17.0, 20.0) if scene.position == "center" else rng.uniform(11.5, 13.0)
    return [(cx + rng.uniform(-1.5, 1.5), cy + rng.uniform(-1.5, 1.5), radius)]


def _polygon(
    cx: float, cy: float, radius: float, corners: int, angle: float, start: float
) -> list[tuple[float, float]]:
    return [
        (
            cx + radius * math.cos(math.radians(start + angle + 360 * i / corners)),
            cy + radius * math.sin(math.radians(start + angle + 360 * i / corners)),
        )
        for i in range(corners)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.3, 4, angle, 45), fill=255)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r * 1.15, 4, angle, 0), fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r * 1.2, 3, angle, -90), fill=255)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r * 1.1, 6, angle, 0), fill=255)
    elif shape == "cross":
        arm = r * 0.38
        for dx, dy in ((r, arm), (arm, r)):
            corners = [(-dx, -dy), (dx, -dy), (dx, dy), (-dx, dy)]
            draw.polygon([_rotate(cx, cy, x, y, angle) for x, y in corners], fill=255)
    elif shape == "heart":
        lobe = r * 0.55
        draw.ellipse((cx - 2 * lobe, cy - r * 0.75, cx, cy - r * 0.75 + 2 * lobe), fill=255)
        draw.ellipse((cx, cy - r * 0.75, cx + 2 * lobe, cy - r * 0.75 + 2 * lobe), fill=255)
        draw.polygon(
            [(cx - 2 * lobe * 0.98, cy - r * 0.2), (cx + 2 * lobe * 0.98, cy - r * 0.2), (cx, cy + r)], fill=255
        )
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _rotate(cx: float, cy: float, x: float, y: float, angle: float) -> tuple[float, float]:
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return cx + x * cos - y * sin, cy + x * sin + y * cos


def _textured(colour: str, texture: str, size: int, rng: random.Random) -> Image.Image:
    """A full-size sheet of the coloured texture; the shape's mask cuts it out."""
    base = np.array(COLOURS[colour], dtype=np.float32)
    light = base * 0.35 + 255 * 0.65  # a pale tint of the colour for the pattern
    ys, xs = np.mgrid[0:size, 0:size] / _SUPERSAMPLE
    phase = rng.uniform(0, 6)
    if texture == "plain":
        pattern = np.zeros((size, size), bool)
    elif texture == "striped":
        pattern = ((xs + ys + phase) // 4) % 2 == 1
    elif texture == "dotted":
        pattern = ((xs + phase) % 7 - 3.5) ** 2 + ((ys + phase) % 7 - 3.5) ** 2 < 4.5
    elif texture == "checkered":
        pattern = (((xs + phase) // 5) + ((ys + phase) // 5)) % 2 == 1
    elif texture == "zigzag":
        pattern = (((ys + 2.5 * np.abs(((xs + phase) % 6) - 3)) // 3) % 2) == 1
    else:
        raise ValueError(f"unknown texture {texture!r}")
    pixels = np.where(pattern[..., None], light, base)
    return Image.fromarray(pixels.astype(np.uint8))


def dataset(count: int, seed: int, shapes=SHAPES, textures=TEXTURES) -> list[tuple[Scene, int]]:
    """``count`` (scene, render seed) pairs, the same for the same seed."""
    rng = random.Random(seed)
    return [(random_scene(rng, shapes, textures), rng.randrange(2**31)) for _ in range(count)]
