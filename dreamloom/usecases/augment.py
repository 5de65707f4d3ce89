"""Dataset augmentation with personalized adapters, measured.

Given a folder of class subfolders with a few real images each, it teaches one adapter per class
(registered in MLflow, promoted and deployed to the serving endpoint), generates N images per class
through the endpoint, writes an augmented dataset (ImageFolder layout and a manifest telling real
from synthetic), then trains the same small classifier twice with the same budget, on the real
images alone and on real + synthetic, and evaluates both on held-out real images.

Metrics (both macro-averaged over classes, so a small class counts as much as a large one):
- balanced accuracy: per class, (sensitivity + specificity) / 2 of the one-vs-rest decision;
- balanced recall: per class, the fraction of its images classified as it (sensitivity).
"""

from __future__ import annotations

import html
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from dreamloom.data.images import image_files
from dreamloom.errors import DreamloomError
from dreamloom.files import staged_folder
from dreamloom.usecases.pictures import picture

MANIFEST = "manifest.json"


class AugmentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5", description="the base the endpoint serves")
    method: str = "lora"
    resolution: int = Field(512, ge=32, le=1024)
    instance_prompt: str = Field("a photo of sks {class_name}", description="{class_name} is the folder's name")
    subject: str = Field("sks {class_name}", description="how generation prompts name the class")
    prompts: list[str] = Field(
        default_factory=lambda: ["a photo of {subject}", "a close-up photo of {subject}", "{subject}, another view"],
        min_length=1,
        description="generation prompts, {subject} replaced; cycled over the images of each class",
    )
    train_steps: int = Field(500, ge=1)
    train_batch: int = Field(2, ge=1)
    gpus_per_worker: float = Field(0, ge=0, description="GPUs of each Ray Train worker teaching a class")
    learning_rate: float = 1e-4
    per_class: int = Field(16, ge=1, le=10_000, description="synthetic images per class")
    min_real: int = Field(3, ge=1, description="fewest real images a class may have")
    generation_steps: int = Field(20, ge=1, le=150)
    guidance: float = 5.0
    classifier: str = Field("small-cnn", description="small-cnn, or a hub id / folder of an image classifier")
    classifier_steps: int = Field(300, ge=1)
    classifier_batch: int = Field(32, ge=1)
    seed: int = 0
    registry_prefix: str = "augment"


def augment_settings(preset: str = "default", overrides: dict | None = None) -> AugmentSettings:
    """``default`` (a Stable Diffusion base) or ``toy`` (tuned for the toy world), with overrides."""
    try:
        if preset == "toy":
            from dreamloom.toy.augmentation import TOY_SETTINGS

            return AugmentSettings(**{**TOY_SETTINGS, **(overrides or {})})
        if preset != "default":
            raise DreamloomError(f"unknown preset {preset!r}; choose default or toy")
        return AugmentSettings(**(overrides or {}))
    except ValueError as exc:
        raise DreamloomError(f"invalid augment settings: {exc}") from None


@dataclass
class Scores:
    balanced_accuracy: float
    balanced_recall: float


@dataclass
class AugmentReport:
    classes: list[str]
    real_only: Scores
    augmented: Scores
    dataset: Path
    adapters: dict[str, str]
    mlflow_run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        """Both variants' scores, flat: ``real_only_balanced_accuracy``, ``real_plus_synthetic_balanced_recall``, ..."""
        return {
            f"{variant}_{name}": float(value)
            for variant, scores in (("real_only", self.real_only), ("real_plus_synthetic", self.augmented))
            for name, value in vars(scores).items()
        }

    def html(self) -> str:
        """The comparison as a table, for the KFP UI."""
        rows = "".join(
            f"<tr><td>{label}</td><td>{scores.balanced_accuracy:.3f}</td><td>{scores.balanced_recall:.3f}</td></tr>"
            for label, scores in (("real only", self.real_only), ("real + synthetic", self.augmented))
        )
        classes = html.escape(", ".join(self.classes))
        return (
            f"<h2>Augmentation: {classes}</h2><table border='1'><tr><th>training data</th>"
            f"<th>balanced accuracy</th><th>balanced recall</th></tr>{rows}</table>"
        )

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "real_only": vars(self.real_only),
            "augmented": vars(self.augmented),
            "dataset": str(self.dataset),
            "adapters": self.adapters,
            "mlflow_run_id": self.mlflow_run_id,
        }


# ----- the input -----


def read_classes(folder: Path, min_images: int = 1, what: str = "training data") -> dict[str, list[Path]]:
    """Class name -> its images, every image checked; any problem is an error naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DreamloomError(f"{what} {folder} is not a folder of class subfolders")
    classes = {}
    for sub in sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")):
        images = image_files(sub)
        if len(images) < min_images:
            raise DreamloomError(
                f"class {sub.name!r} in {folder} has {len(images)} images; at least {min_images} are needed"
            )
        for image in images:
            picture(image, f"{what} image")
        classes[sub.name] = images
    if len(classes) < 2:
        raise DreamloomError(f"{what} {folder} needs at least two class subfolders (found {len(classes)})")
    return classes


# ----- personalization and generation -----


def check_inputs(data: Path, eval_data: Path, settings: AugmentSettings):
    """The training and held-out classes, every image read; refused before any compute."""
    classes = read_classes(data, settings.min_real, "training data")
    held_out = read_classes(eval_data, 1, "held-out data")
    if set(held_out) != set(classes):
        raise DreamloomError(f"held-out classes {sorted(held_out)} differ from the training classes {sorted(classes)}")
    for name in classes:
        adapter_name(settings, name)
    return classes, held_out


def adapter_name(settings: AugmentSettings, class_name: str) -> str:
    return f"{settings.registry_prefix}-{_slug(class_name)}"


def teach_class(
    name: str, images: list[Path], settings: AugmentSettings, work: Path, index: int = 0, launcher: str = "local"
) -> str:
    """Train the class's adapter, register it and make it the champion; returns the model's name.
    (Classes train independently: a pipeline runs them in parallel.)"""
    from dreamloom.config import load_run_config
    from dreamloom.registry import promote, register
    from dreamloom.training.launcher import launch

    data = work / "real" / name
    data.mkdir(parents=True, exist_ok=True)
    for image in images:
        shutil.copy(image, data / image.name)
    model_name = adapter_name(settings, name)
    print(f"[dreamloom] augment: teaching class {name!r} ({len(images)} images) as {model_name}", flush=True)
    config = load_run_config(
        None,
        {
            "method": settings.method,
            "base_model": settings.base_model,
            "data.path": str(data),
            "data.instance_prompt": settings.instance_prompt.format(class_name=name),
            "data.trigger_token": "sks",
            "data.resolution": settings.resolution,
            "output": str(work / "adapters" / model_name),
            "run_name": f"{model_name}-{os.getpid()}-{index}",
            "experiment": "dreamloom-augment",
            "training.steps": settings.train_steps,
            "training.batch_size": settings.train_batch,
            "training.checkpoint_every": 0,
            "training.seed": settings.seed + index,
            "scaling.gpus_per_worker": settings.gpus_per_worker,
            "optimizer.learning_rate": settings.learning_rate,
            "validation.every": 0,
        },
    )
    result = launch(config, launcher)
    version = register(result.artifact, model_name)
    promote(model_name, str(version.version), force=True, reason="dreamloom augment: one adapter per class")
    return model_name


def deploy_classes(names: list[str], settings: AugmentSettings, url: str, store) -> dict[str, str]:
    """Deploy every class's champion, one after another (each deploy is a new Triton version)."""
    from dreamloom.serving.deploy import deploy

    adapters = {}
    for name in names:
        reference = f"{adapter_name(settings, name)}@champion"
        deploy(reference, url, store=store)
        adapters[name] = reference
    return adapters


def generation_prompts(settings: AugmentSettings, class_name: str, count: int) -> list[str]:
    subject = settings.subject.format(class_name=class_name)
    return [settings.prompts[i % len(settings.prompts)].format(subject=subject) for i in range(count)]


def generate(client, adapters: dict[str, str], settings: AugmentSettings) -> dict[str, list[tuple[Image.Image, dict]]]:
    """N images per class through the endpoint, each with its prompt and seed."""
    from dreamloom.serving.protocol import ImageRequest

    synthetic = {}
    for index, (name, adapter) in enumerate(adapters.items()):
        prompts = generation_prompts(settings, name, settings.per_class)
        seeds = [settings.seed * 100_003 + index * 10_007 + i for i in range(settings.per_class)]
        requests = [
            ImageRequest(
                prompt,
                adapter=adapter,
                seed=seed,
                steps=settings.generation_steps,
                guidance=settings.guidance,
                width=settings.resolution,
                height=settings.resolution,
                solo=True,
            )
            for prompt, seed in zip(prompts, seeds, strict=True)
        ]
        print(f"[dreamloom] augment: generating {len(requests)} images of {name!r}", flush=True)
        images = client.generate_many(requests, progress=True)
        synthetic[name] = [
            (Image.fromarray(image), {"prompt": p, "seed": s, "adapter": adapter})
            for image, p, s in zip(images, prompts, seeds, strict=True)
        ]
    return synthetic


def write_dataset(out: Path, classes: dict[str, list[Path]], synthetic: dict[str, list]) -> list[dict]:
    """ImageFolder layout (out/CLASS/*.png) and a manifest entry per image: real or synthetic."""
    manifest = []
    for name, images in classes.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(images):
            target = f"{name}/real_{index:04d}.png"
            picture(path, "image").save(out / target)
            manifest.append({"file": target, "class": name, "source": "real", "original": path.name})
        for index, (image, facts) in enumerate(synthetic.get(name, [])):
            target = f"{name}/synthetic_{index:04d}.png"
            image.save(out / target)
            manifest.append({"file": target, "class": name, "source": "synthetic", **facts})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


# ----- the classifier -----


def small_cnn(classes: int) -> torch.nn.Module:
    def block(inputs: int, outputs: int) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(inputs, outputs, 3, padding=1), torch.nn.BatchNorm2d(outputs), torch.nn.ReLU()]

    return torch.nn.Sequential(
        *block(3, 32),
        torch.nn.MaxPool2d(2),
        *block(32, 64),
        torch.nn.MaxPool2d(2),
        *block(64, 96),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(96, classes),
    )


def hub_classifier(reference: str, classes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """An image classifier from the hub or a folder (e.g. google/efficientnet-b0), its head
    replaced for ``classes``; loaded from safetensors only."""
    from transformers import AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(
            reference, num_labels=classes, ignore_mismatched_sizes=True, use_safetensors=True
        )
    except OSError as exc:
        raise DreamloomError(f"classifier {reference} cannot be loaded here ({exc}); use small-cnn") from None

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixels).logits

    return Logits()


def _tensors(paths: list[Path], size: int) -> torch.Tensor:
    arrays = [np.asarray(Image.open(path).convert("RGB").resize((size, size))) for path in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_classifier(
    items: list[tuple[Path, int]], classes: int, settings: AugmentSettings, size: int
) -> torch.nn.Module:
    """Class-balanced batches, light augmentation (flips, shifts), a fixed budget of steps."""
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    model = small_cnn(classes) if settings.classifier == "small-cnn" else hub_classifier(settings.classifier, classes)
    pixels = _tensors([path for path, _ in items], size)
    labels = torch.tensor([label for _, label in items])
    by_class = [[i for i, (_, label) in enumerate(items) if label == c] for c in range(classes)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=settings.classifier_steps)
    model.train()
    report_every = max(1, settings.classifier_steps // 5)
    for step in range(1, settings.classifier_steps + 1):
        batch = [rng.choice(by_class[i % classes]) for i in range(settings.classifier_batch)]
        inputs = _jitter(pixels[batch], rng)
        loss = torch.nn.functional.cross_entropy(model(inputs), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % report_every == 0 or step == settings.classifier_steps:
            print(f"[dreamloom] classifier step {step}/{settings.classifier_steps} loss {loss.item():.4f}", flush=True)
    return model.eval()


def _jitter(batch: torch.Tensor, rng: random.Random) -> torch.Tensor:
    if rng.random() < 0.5:
        batch = batch.flip(3)
    shift = (rng.randint(-4, 4), rng.randint(-4, 4))
    return torch.roll(batch, shifts=shift, dims=(2, 3))


@torch.no_grad()
def score(model: torch.nn.Module, items: list[tuple[Path, int]], classes: int, size: int) -> Scores:
    predicted = model(_tensors([path for path, _ in items], size)).argmax(1).numpy()
    return balanced_scores(predicted, np.array([label for _, label in items]), classes)


def balanced_scores(predicted: np.ndarray, actual: np.ndarray, classes: int) -> Scores:
    recalls, balanced = [], []
    for c in range(classes):
        positive, negative = actual == c, actual != c
        sensitivity = float((predicted[positive] == c).mean()) if positive.any() else 0.0
        specificity = float((predicted[negative] != c).mean()) if negative.any() else 1.0
        recalls.append(sensitivity)
        balanced.append((sensitivity + specificity) / 2)
    return Scores(round(float(np.mean(balanced)), 4), round(float(np.mean(recalls)), 4))


# ----- the experiment -----


def run_experiment(
    data: Path,
    eval_data: Path,
    out: Path,
    url: str,
    store,
    settings: AugmentSettings | None = None,
    launcher: str = "local",
) -> AugmentReport:
    """Everything above, in order."""
    settings = settings or AugmentSettings()
    if Path(out).exists():
        raise DreamloomError(f"output folder {out} exists; choose another --out")
    classes, held_out = check_inputs(data, eval_data, settings)
    with tempfile.TemporaryDirectory(prefix="dreamloom-augment-") as work:
        for index, (name, images) in enumerate(classes.items()):
            teach_class(name, images, settings, Path(work), index, launcher)
    return _synthesize_and_compare(classes, held_out, Path(out), url, store, settings)


def synthesize_and_compare(
    data: Path, eval_data: Path, out: Path, url: str, store, settings: AugmentSettings
) -> AugmentReport:
    """Deploy the classes' adapters, generate, write the dataset, train and score both classifiers,
    log to MLflow. The output folder appears complete or not at all."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DreamloomError(f"output folder {out} is not empty; choose another --out")
    classes, held_out = check_inputs(data, eval_data, settings)
    return _synthesize_and_compare(classes, held_out, out, url, store, settings)


def _synthesize_and_compare(
    classes: dict[str, list[Path]],
    held_out: dict[str, list[Path]],
    out: Path,
    url: str,
    store,
    settings: AugmentSettings,
) -> AugmentReport:
    from dreamloom.serving.client import ServingClient

    adapters = deploy_classes(list(classes), settings, url, store)
    with staged_folder(out) as staging:
        with ServingClient(url) as client:
            synthetic = generate(client, adapters, settings)
        manifest = write_dataset(staging / "dataset", classes, synthetic)
        report = _compare(staging / "dataset", manifest, held_out, list(classes), settings, adapters)
        (staging / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    report.dataset = out / "dataset"
    report.mlflow_run_id = _log(report, settings, out)
    return report


def _compare(
    dataset: Path,
    manifest: list[dict],
    held_out: dict[str, list[Path]],
    names: list[str],
    settings: AugmentSettings,
    adapters: dict[str, str],
) -> AugmentReport:
    label = {name: index for index, name in enumerate(names)}
    real = [(dataset / item["file"], label[item["class"]]) for item in manifest if item["source"] == "real"]
    everything = [(dataset / item["file"], label[item["class"]]) for item in manifest]
    evaluation = [(path, label[name]) for name, paths in held_out.items() for path in paths]
    results = []
    for items, what in ((real, "real only"), (everything, "real + synthetic")):
        print(f"[dreamloom] augment: training the classifier on {what} ({len(items)} images)", flush=True)
        model = train_classifier(items, len(names), settings, settings.resolution)
        results.append(score(model, evaluation, len(names), settings.resolution))
    return AugmentReport(names, results[0], results[1], dataset, adapters)


def _log(report: AugmentReport, settings: AugmentSettings, out: Path) -> str:
    from mlflow.entities import Metric, Param

    from dreamloom.settings import tracking_uri
    from dreamloom.tracking import client, experiment_id

    mlflow = client(tracking_uri())
    run = mlflow.create_run(experiment_id(mlflow, "dreamloom-augment"), run_name="augment")
    run_id = run.info.run_id
    params = [Param(key, str(value)) for key, value in settings.model_dump().items()]
    params.append(Param("classes", ",".join(report.classes)))
    metrics = [
        Metric(f"{variant}_{name}", value, 0, 0)
        for variant, scores in (("real_only", report.real_only), ("augmented", report.augmented))
        for name, value in vars(scores).items()
    ]
    mlflow.log_batch(run_id, metrics=metrics, params=params)
    mlflow.log_artifact(run_id, str(out / "report.json"))
    mlflow.log_artifact(run_id, str(out / "dataset" / MANIFEST))
    mlflow.set_terminated(run_id, status="FINISHED")
    return run_id


def _slug(name: str) -> str:
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug:
        raise DreamloomError(f"class name {name!r} has no letters or digits to name its adapter with")
    return slug
