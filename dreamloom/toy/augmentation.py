"""Toy classes for the augmentation experiment: a few real pictures per class, narrow in what they
show (plain objects on white, centred), and held-out pictures as varied as the world (every
colour, background and position). What a classifier learns from the few must carry over to the rest.

Two classes are shapes the toy base never saw (hexagon, heart), two it knows (diamond, cross).
"""

from __future__ import annotations

import random
from pathlib import Path

from dreamloom.toy import world
from dreamloom.toy.concepts import SUBJECT

CLASSES = ("hexagon", "heart", "diamond", "cross")
# Generation prompts for the adapters: the subject in the settings held-out pictures have.
PROMPTS = tuple(
    f"a {colour} {{subject}} on a {background} background{where}"
    for colour, background, where in (
        ("red", "gray", ""),
        ("blue", "black", ", top left"),
        ("green", "beige", ", bottom right"),
        ("orange", "white", ", top right"),
        ("purple", "gray", ", bottom left"),
        ("yellow", "black", ""),
        ("blue", "beige", ", top right"),
        ("red", "white", ", bottom left"),
    )
)
INSTANCE_PROMPT = f"a {SUBJECT} on a white background"


# The augmentation experiment's settings for the toy world (measured to teach each class in 300
# steps); ``dreamloom augment --preset toy`` starts from them.
TOY_SETTINGS = {
    "base_model": "toy",
    "resolution": 64,
    "instance_prompt": INSTANCE_PROMPT,
    "subject": SUBJECT,
    "prompts": list(PROMPTS),
    "train_steps": 300,
    "train_batch": 4,
    "learning_rate": 3e-3,
    "per_class": 16,
    "generation_steps": 20,
    "guidance": 5.0,
    "classifier_steps": 300,
}


def write_classes(
    train: Path,
    held_out: Path,
    real_per_class: int = 5,
    held_out_per_class: int = 30,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
) -> tuple[Path, Path]:
    """Class subfolders of real training pictures and of held-out pictures."""
    rng = random.Random(seed)
    colours = list(world.COLOURS)
    for name in classes:
        for folder, count, varied in ((train, real_per_class, False), (held_out, held_out_per_class, True)):
            (folder / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                scene = world.Scene(
                    name,
                    rng.choice(colours),
                    "plain",
                    rng.choice(list(world.BACKGROUNDS)) if varied else "white",
                    rng.choice(list(world.POSITIONS)) if varied else "center",
                )
                world.render(scene, rng.randrange(10**6)).save(folder / name / f"{name}_{index:03d}.png")
    return train, held_out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="write the toy classes for dreamloom augment")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--real", type=int, default=5, help="real training pictures per class")
    parser.add_argument("--held-out", type=int, default=30, help="held-out pictures per class")
    args = parser.parse_args(argv)
    train, held_out = write_classes(args.out / "train", args.out / "held-out", args.real, args.held_out)
    print(f"training classes in {train}, held-out in {held_out}")


if __name__ == "__main__":
    main()
