"""The toy world's evaluator: attribute classifiers and a subject-embedding network.

- ``AttributeClassifier`` reads shape, colour, background, texture, position and count off a
  picture. It gives the toy base its prompt fidelity: the share of the attributes a prompt names
  that the classifier sees in the generated image.
- ``SubjectEmbedder`` maps a picture to a unit vector where the same object (shape, colour,
  texture) lands close whatever its position, size or background, trained contrastively on
  the seen shapes and textures only, so that it also has to work on concepts it never saw (the
  DINO role: subject fidelity).

Both are small CNNs trained on procedural pictures, with blur and noise so that they also read
the toy model's (softer) generations. They plug into ``dreamloom evaluate`` as the toy base's
encoders ``toy-attributes`` and ``toy-subject``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from dreamloom.toy import world

ATTRIBUTES = {
    "shape": world.SHAPES + world.NEW_SHAPES,
    "colour": tuple(world.COLOURS),
    "background": tuple(world.BACKGROUNDS),
    "texture": world.TEXTURES + world.NEW_TEXTURES,
    "position": tuple(world.POSITIONS),
    "count": ("one", "two"),
}
ASSETS = Path(__file__).with_name("assets")
EVALUATOR_FILE = ASSETS / "evaluator.safetensors"


def _backbone(width: int = 32) -> torch.nn.Sequential:
    layers, channels = [], 3
    for out in (width, width * 2, width * 4, width * 4):
        layers += [torch.nn.Conv2d(channels, out, 3, stride=2, padding=1), torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
        channels = out
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


class AttributeClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _backbone()
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(128, len(values)) for name, values in ATTRIBUTES.items()}
        )

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(pixels)
        return {name: head(features) for name, head in self.heads.items()}


class SubjectEmbedder(torch.nn.Module):
    def __init__(self, dim: int = 64):
        super().__init__()
        self.backbone = _backbone()
        self.project = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(self.backbone(pixels)), dim=-1)


def to_pixels(images: list[Image.Image]) -> torch.Tensor:
    array = np.stack([np.asarray(i.convert("RGB").resize((world.SIZE, world.SIZE)), dtype=np.float32) for i in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).div(127.5).sub(1.0)


def labels(scene: world.Scene) -> dict[str, int]:
    return {
        "shape": ATTRIBUTES["shape"].index(scene.shape),
        "colour": ATTRIBUTES["colour"].index(scene.colour),
        "background": ATTRIBUTES["background"].index(scene.background),
        "texture": ATTRIBUTES["texture"].index(scene.texture),
        "position": ATTRIBUTES["position"].index(scene.position),
        "count": scene.count - 1,
    }


def _soften(image: Image.Image, rng: random.Random) -> Image.Image:
    """Blur and noise like a small generator's output."""
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0)))
    if rng.random() < 0.6:
        noise = np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(2, 10), (world.SIZE, world.SIZE, 3))
        image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))
    return image


# ----- training -----


@dataclass(frozen=True)
class EvaluatorConfig:
    seed: int = 0
    classifier_steps: int = 1500
    embedder_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    threads: int = 2


def _scene_batch(rng: random.Random, size: int, shapes, textures) -> tuple[list[world.Scene], torch.Tensor]:
    scenes = [world.random_scene(rng, shapes, textures) for _ in range(size)]
    images = [_soften(world.render(scene, rng.randrange(2**31)), rng) for scene in scenes]
    return scenes, to_pixels(images)


def train_classifier(config: EvaluatorConfig, log) -> AttributeClassifier:
    rng = random.Random(config.seed)
    model = AttributeClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=config.classifier_steps)
    model.train()
    for step in range(1, config.classifier_steps + 1):
        scenes, pixels = _scene_batch(rng, config.batch_size, ATTRIBUTES["shape"], ATTRIBUTES["texture"])
        outputs = model(pixels)
        loss = 0.0
        for name in ATTRIBUTES:
            target = torch.tensor([labels(s)[name] for s in scenes])
            per_example = F.cross_entropy(outputs[name], target, reduction="none")
            if name == "position":  # pairs stand side by side: no position to learn
                per_example = per_example * torch.tensor([s.count == 1 for s in scenes], dtype=torch.float32)
            loss = loss + per_example.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == config.classifier_steps:
            log("classifier", step, loss.item())
    return model.eval()


def train_embedder(config: EvaluatorConfig, log) -> SubjectEmbedder:
    """Supervised-contrastive on object identity (shape, colour, texture) over the seen shapes and
    textures; two pictures of the same identity differ in position, size, count and background."""
    rng = random.Random(config.seed + 1)
    model = SubjectEmbedder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=config.embedder_steps)
    model.train()
    half = config.batch_size // 2
    for step in range(1, config.embedder_steps + 1):
        scenes = [world.random_scene(rng) for _ in range(half)]
        pairs = [_other_view(scene, rng) for scene in scenes]
        images = [_soften(world.render(s, rng.randrange(2**31)), rng) for s in scenes + pairs]
        identity = torch.tensor([hash((s.shape, s.colour, s.texture)) % 2**31 for s in scenes + pairs])
        loss = _supervised_contrastive(model(to_pixels(images)), identity)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == config.embedder_steps:
            log("embedder", step, loss.item())
    return model.eval()


def _other_view(scene: world.Scene, rng: random.Random) -> world.Scene:
    count = 2 if rng.random() < 0.2 else 1
    return world.Scene(
        scene.shape,
        scene.colour,
        scene.texture,
        rng.choice(list(world.BACKGROUNDS)),
        rng.choice(list(world.POSITIONS)) if count == 1 else "center",
        count,
    )


def _supervised_contrastive(embeddings: torch.Tensor, identity: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    logits = embeddings @ embeddings.T / temperature
    eye = torch.eye(len(identity), dtype=torch.bool)
    logits = logits.masked_fill(eye, -1e9)
    positives = (identity[:, None] == identity[None, :]) & ~eye
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(log_prob * positives).sum(1).div(positives.sum(1).clamp(min=1)).mean()


# ----- measuring and saving -----


@torch.no_grad()
def classifier_accuracy(
    model: AttributeClassifier, count: int = 2000, seed: int = 12345, shapes=world.SHAPES, textures=world.TEXTURES
) -> dict[str, float]:
    rng = random.Random(seed)
    tally = AttributeTally()
    for start in range(0, count, 200):
        scenes, pixels = _scene_batch(rng, min(200, count - start), shapes, textures)
        tally.add(model(pixels), scenes)
    return tally.accuracy()


class AttributeTally:
    """Per-attribute accuracy of classifier outputs against the scenes drawn (a pair of objects
    has no position, so position is not counted for it)."""

    def __init__(self):
        self.correct = {name: 0 for name in ATTRIBUTES}
        self.totals = {name: 0 for name in ATTRIBUTES}

    def add(self, outputs: dict[str, torch.Tensor], scenes: list[world.Scene]) -> None:
        predictions = {name: out.argmax(-1) for name, out in outputs.items()}
        for index, scene in enumerate(scenes):
            truth = labels(scene)
            for name in ATTRIBUTES:
                if name == "position" and scene.count == 2:
                    continue
                self.totals[name] += 1
                self.correct[name] += int(predictions[name][index] == truth[name])

    def accuracy(self) -> dict[str, float]:
        return {name: self.correct[name] / self.totals[name] for name in ATTRIBUTES}


@torch.no_grad()
def unseen_identity_retrieval(model: SubjectEmbedder, seed: int = 54321, views: int = 6) -> float:
    """How often a picture of a never-seen object is nearest to another picture of the same object
    rather than to any other object's (unseen shapes or texture)."""
    rng = random.Random(seed)
    identities = [
        (shape, colour, texture)
        for shape in world.NEW_SHAPES
        for colour in list(world.COLOURS)[:3]
        for texture in ("plain", "striped")
    ]
    identities += [(shape, colour, "zigzag") for shape in world.SHAPES[:3] for colour in list(world.COLOURS)[3:5]]
    images, owners = [], []
    for number, (shape, colour, texture) in enumerate(identities):
        for _ in range(views):
            scene = _other_view(world.Scene(shape, colour, texture, "white"), rng)
            images.append(world.render(scene, rng.randrange(2**31)))
            owners.append(number)
    embeddings = model(to_pixels(images))
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2)
    nearest = similarity.argmax(1)
    owners_tensor = torch.tensor(owners)
    return float((owners_tensor[nearest] == owners_tensor).float().mean())


def save(classifier: AttributeClassifier, embedder: SubjectEmbedder, report: dict, folder: Path = ASSETS) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"classifier.{k}": v.contiguous() for k, v in classifier.state_dict().items()}
    tensors.update({f"embedder.{k}": v.contiguous() for k, v in embedder.state_dict().items()})
    path = folder / EVALUATOR_FILE.name
    save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, str(path))
    (folder / "evaluator.json").write_text(json.dumps(report, indent=1))
    return path


def load(path: Path = EVALUATOR_FILE) -> tuple[AttributeClassifier, SubjectEmbedder]:
    from safetensors.torch import load_file

    from dreamloom.errors import DreamloomError

    if not path.is_file():
        raise DreamloomError(f"the toy evaluator is not built ({path} missing); run `make toy-evaluator`")
    tensors = load_file(str(path))
    classifier, embedder = AttributeClassifier(), SubjectEmbedder()
    classifier.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("classifier.")})
    embedder.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("embedder.")})
    return classifier.eval(), embedder.eval()


def build(config: EvaluatorConfig = EvaluatorConfig(), folder: Path = ASSETS) -> dict:
    """Train both networks, measure them, save them with a report; returns the report."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    history: list[dict] = []

    def log(part: str, step: int, loss: float) -> None:
        history.append(
            {"part": part, "step": step, "loss": round(loss, 5), "seconds": round(time.perf_counter() - started, 1)}
        )
        print(f"[toy evaluator] {part} step {step} loss {loss:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)

    classifier = train_classifier(config, log)
    embedder = train_embedder(config, log)
    report = {
        "config": config.__dict__,
        "held_out_accuracy": classifier_accuracy(
            classifier, shapes=ATTRIBUTES["shape"], textures=ATTRIBUTES["texture"]
        ),
        "unseen_identity_retrieval": unseen_identity_retrieval(embedder),
        "seconds": round(time.perf_counter() - started, 1),
        "history": history,
    }
    save(classifier, embedder, report, folder)
    return report


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train the toy evaluator (about 12 minutes on 2 cores).")
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--steps", type=int, default=EvaluatorConfig.classifier_steps, help="per network")
    args = parser.parse_args(argv)
    report = build(EvaluatorConfig(classifier_steps=args.steps, embedder_steps=args.steps), args.out)
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
