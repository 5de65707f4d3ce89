"""Turning a folder of instance images into a validated, prepared training set.

Input: a folder of ``.jpg``/``.jpeg``/``.png``/``.webp`` images, each optionally with a caption
``name.txt`` beside it, and for ControlNet with a companion ``name.mask.png`` or
``name.cond.png``. Every file is checked first; if anything is wrong, one
``DataValidationError`` lists every offending file and why, and nothing is written. Otherwise the
images are oriented, converted to RGB, resized and center-cropped to the resolution (or to their
aspect-ratio bucket) and written, with their conditions, into a fresh folder that appears
atomically, with a manifest ``dataset.json`` that records the content hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image

from dreamloom.data import conditions
from dreamloom.data.images import (
    FORMAT_NAMES,
    IMAGE_SUFFIXES,
    UNSUPPORTED_IMAGE_SUFFIXES,
    ImageProblem,
    open_rgb,
)
from dreamloom.errors import DataValidationError, DreamloomError
from dreamloom.files import sha256_file, staged_folder

log = logging.getLogger(__name__)
MANIFEST = "dataset.json"
FORMAT_VERSION = 1
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_CHARS = 1000  # CLIP reads 77 tokens; a longer "caption" is a mistake, not a description
SYMLINK_PROBLEM = "is a symbolic link; dreamloom reads only regular files inside the data folder: copy the file in"
COMPANION_MARKERS = tuple(conditions.COMPANION_SUFFIX.values())


@dataclass(frozen=True)
class PrepareOptions:
    resolution: int = 512
    bucketing: bool = False
    bucket_step: int | None = None
    max_image_pixels: int = 50_000_000
    max_total_pixels: int = 50_000_000_000  # the whole folder's decode work (about 4,000 phone photos)
    condition: str | None = None  # ControlNet: canny, scribble, mask or user
    upscale: bool = True  # images smaller than their target are upscaled (warned); False refuses them
    canny_thresholds: tuple[int, int] = (100, 200)

    @property
    def step(self) -> int:
        """Bucket sides are multiples of this (64 px at 512, as kohya; 8 px at 64)."""
        return self.bucket_step or max(8, min(64, self.resolution // 64 * 8))

    def buckets(self) -> list[tuple[int, int]]:
        """(width, height) sizes of about resolution^2 pixels over common aspect ratios."""
        from diffusers.training_utils import generate_aspect_ratio_buckets  # imports torch: not at start-up

        return [(w, h) for h, w in generate_aspect_ratio_buckets(self.resolution, self.step)]

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        if not self.bucketing:
            return (self.resolution, self.resolution)
        options = self.buckets()
        from diffusers.training_utils import find_nearest_bucket

        nearest = find_nearest_bucket(height, width, [(h, w) for w, h in options])
        return options[nearest]

    @property
    def companion_marker(self) -> str | None:
        return conditions.COMPANION_SUFFIX.get(self.condition or "")

    def key(self) -> str:
        key = f"r{self.resolution}" + (f"-b{self.step}" if self.bucketing else "")
        if self.condition:
            key += f"-{self.condition}"
            if self.condition in conditions.EXTRACTED:
                key += "{}-{}".format(*self.canny_thresholds)
        return key


@dataclass
class PreparedItem:
    image: str  # path relative to the dataset folder
    source: str  # file name in the source folder
    caption: str | None
    size: tuple[int, int]  # (width, height) after preparation
    original_size: tuple[int, int]  # (width, height) after EXIF orientation
    crop_top_left: tuple[int, int]  # (top, left) in resized pixels, for SDXL's size conditioning
    condition: str | None = None  # path of the ControlNet condition image, same size as ``image``


@dataclass
class PreparedDataset:
    root: Path
    dataset_hash: str
    resolution: int
    bucketing: bool
    items: list[PreparedItem] = field(default_factory=list)
    source: str = ""
    condition: str | None = None

    @classmethod
    def load(cls, root: Path) -> PreparedDataset:
        root = Path(root).absolute()  # workers (other processes, other working folders) read it too
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise DreamloomError(f"{root} is not a prepared dataset (no {MANIFEST})")
        data = json.loads(manifest_path.read_text())
        if data.get("format") != FORMAT_VERSION:
            raise DreamloomError(f"{manifest_path} has format {data.get('format')}, expected {FORMAT_VERSION}")
        items = [
            PreparedItem(
                image=i["image"],
                source=i["source"],
                caption=i["caption"],
                size=tuple(i["size"]),
                original_size=tuple(i["original_size"]),
                crop_top_left=tuple(i["crop_top_left"]),
                condition=i.get("condition"),
            )
            for i in data["items"]
        ]
        files = [i.image for i in items] + [i.condition for i in items if i.condition]
        outside = [
            name
            for name in files
            if (root / name).is_symlink() or not (root / name).resolve().is_relative_to(root.resolve())
        ]
        if outside:
            raise DreamloomError(
                f"prepared dataset {root} names files outside it or symbolic links ({outside[0]}); prepare it again"
            )
        missing = [name for name in files if not (Path(root) / name).is_file()]
        if missing:
            raise DreamloomError(f"prepared dataset {root} is incomplete; missing {missing[:5]}; prepare it again")
        return cls(
            Path(root),
            data["dataset_hash"],
            data["resolution"],
            data["bucketing"],
            items,
            data.get("source", ""),
            data.get("condition"),
        )

    def write_manifest(self) -> None:
        document = {
            "format": FORMAT_VERSION,
            "dataset_hash": self.dataset_hash,
            "resolution": self.resolution,
            "bucketing": self.bucketing,
            "condition": self.condition,
            "source": self.source,
            "items": [asdict(item) for item in self.items],
        }
        (self.root / MANIFEST).write_text(json.dumps(document, indent=1))

    def matches(self, source_hash: str, options: PrepareOptions) -> bool:
        return (
            self.dataset_hash == source_hash
            and self.resolution == options.resolution
            and self.bucketing == options.bucketing
            and self.condition == options.condition
        )


@dataclass
class _Candidate:
    """A checked image: what writing it needs, without its pixels (decoded again when written)."""

    path: Path
    caption: str | None
    size: tuple[int, int]  # (width, height), upright
    target: tuple[int, int]
    companion: Path | None = None

    @property
    def upscaled(self) -> bool:
        return self.target[0] > self.size[0] or self.target[1] > self.size[1]


@dataclass
class _Listing:
    images: list[Path]
    captions: dict[str, Path]
    companions: dict[str, dict[str, Path]]  # image stem -> marker (".mask"/".cond") -> file
    problems: list[tuple[str, str]]


def copy_data_folder(source: Path, target: Path) -> None:
    """Copy a data folder for a job that runs elsewhere: its regular files only, hidden ones left
    behind; a symbolic link anywhere in it refuses the copy (it would carry a host file along)."""
    links = []
    for top, folders, files in os.walk(source, followlinks=False):
        for name in (*folders, *files):
            if os.path.islink(os.path.join(top, name)):
                links.append(os.path.relpath(os.path.join(top, name), source))
    if links:
        raise DataValidationError(str(source), [(name, SYMLINK_PROBLEM) for name in sorted(links)])
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))


def is_prepared(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def dataset_hash(folder: Path) -> str:
    """Content hash of the source folder: image, companion and caption bytes, by file name."""
    listing = _list_folder(Path(folder))
    digest = hashlib.sha256()
    for path in listing.images:
        related = [path, listing.captions.get(path.stem), *sorted(listing.companions.get(path.stem, {}).values())]
        for member in filter(None, related):
            digest.update(member.name.encode() + b"\0" + bytes.fromhex(sha256_file(member)) + b"\0")
    return "sha256:" + digest.hexdigest()


def prepare_dataset(source: Path, output: Path, options: PrepareOptions) -> PreparedDataset:
    """Validate every file in ``source``; write the prepared set to ``output`` only if all pass."""
    source, output = Path(source), Path(output)
    _check_folder(source)
    if is_prepared(output):
        existing = PreparedDataset.load(output)
        if existing.matches(dataset_hash(source), options):
            # The cache is keyed by content: the same pictures in another folder reuse it, and the
            # run's lineage names the folder it was given.
            return replace(existing, source=str(source.absolute()))
    elif output.exists() and any(output.iterdir()):
        raise DreamloomError(f"output folder {output} exists and is not a prepared dataset; choose an empty folder")
    candidates = inspect_folder(source, options)
    return _write_prepared(source, output, candidates, options)


def inspect_folder(source: Path, options: PrepareOptions) -> list[_Candidate]:
    """Decode and size-check every image (and companion); raise one error listing all problems."""
    _check_folder(source)
    listing = _list_folder(source)
    problems = listing.problems
    if not listing.images and not problems:
        problems.append(("(folder)", f"no images found: add {FORMAT_NAMES} files (captions as name.txt)"))
    _check_total_pixels(source, listing, options)
    caption_owners: dict[str, Path] = {}
    candidates = []
    for path in listing.images:
        if path.stem in caption_owners and path.stem in listing.captions:
            owner = caption_owners[path.stem].name
            problems.append((path.name, f"shares its caption {path.stem}.txt with {owner}; rename one"))
            continue
        caption_owners[path.stem] = path
        try:
            candidate = _inspect_image(path, listing, options)
        except ImageProblem as exc:
            problems.append((path.name, str(exc)))
            continue
        candidates.append(candidate)
    image_stems = {p.stem for p in listing.images}
    for stem, caption_path in listing.captions.items():
        if stem not in image_stems:
            problems.append((caption_path.name, f"caption without an image (expected {stem}.png/.jpg/.webp beside it)"))
    for stem, companions in listing.companions.items():
        if stem not in image_stems:
            for companion in companions.values():
                problems.append((companion.name, f"condition without an image (expected {stem}.png beside it)"))
    if problems:
        raise DataValidationError(str(source), sorted(problems))
    _warn_upscaled([c for c in candidates if c.upscaled], options)
    return candidates


def _warn_upscaled(upscaled: list[_Candidate], options: PrepareOptions) -> None:
    """Upscaled pictures train on blurred detail: say which, as kohya and diffusers do not."""
    if not upscaled:
        return
    sizes = ", ".join(f"{c.path.name} ({c.size[0]}x{c.size[1]})" for c in upscaled[:5])
    more = f" and {len(upscaled) - 5} more" if len(upscaled) > 5 else ""
    log.warning(
        "%d image(s) smaller than the training size at resolution %d were upscaled: %s%s. Their detail will be "
        "soft; use larger originals, a lower resolution, or data.upscale_small_images=false to refuse them",
        len(upscaled), options.resolution, sizes, more,
    )  # fmt: skip


def _check_total_pixels(source: Path, listing: _Listing, options: PrepareOptions) -> None:
    """Refuse a folder whose images add up to more pixels than the budget, from their headers alone
    (nothing is decoded yet)."""
    total = 0
    for path in listing.images:
        try:
            with Image.open(path) as image:
                total += image.width * image.height
        except Exception:  # unreadable files are named with their problem by the full check
            continue
    if total > options.max_total_pixels:
        budget = options.max_total_pixels / 1e6
        problem = (
            f"its {len(listing.images)} images hold {total / 1e6:,.0f} megapixels, over the budget of {budget:,.0f}; "
            "use fewer or smaller images, or raise data.max_total_pixels"
        )
        raise DataValidationError(str(source), [("(folder)", problem)])


def _inspect_image(path: Path, listing: _Listing, options: PrepareOptions) -> _Candidate:
    """Decode the image (and its companion) completely to check them; keep only their sizes."""
    caption = _read_caption(listing.captions.get(path.stem))
    image = open_rgb(path, options.max_image_pixels)
    target = options.target_size(*image.size)
    if not options.upscale and max(target[0] / image.width, target[1] / image.height) > 1:
        raise ImageProblem(
            f"{image.width}x{image.height} is too small for {target[0]}x{target[1]} at resolution "
            f"{options.resolution} and upscaling is off; use a larger image, a lower --resolution, "
            "or allow upscaling (data.upscale_small_images=true)"
        )
    companion = None
    marker = options.companion_marker
    if marker:
        companion_path = listing.companions.get(path.stem, {}).get(marker)
        if companion_path is None:
            raise ImageProblem(f"--condition {options.condition} needs {path.stem}{marker}.png beside it")
        try:
            companion = open_rgb(companion_path, options.max_image_pixels)
        except ImageProblem as exc:
            raise ImageProblem(f"its condition {companion_path.name}: {exc}") from None
        if companion.size != image.size:
            raise ImageProblem(
                f"its condition {companion_path.name} is {companion.width}x{companion.height}, "
                f"the image {image.width}x{image.height}; they must match"
            )
        companion = companion_path
    return _Candidate(path, caption, image.size, target, companion)


def prepare_training_data(settings, controlnet=None, into: Path | None = None) -> PreparedDataset:
    """The prepared set for a run's ``data`` settings (and ``controlnet`` settings, for its
    conditions): written ``into`` a folder (a pipeline's Dataset artifact), else a cached copy in
    the work folder, or the folder itself when it is already prepared."""
    from dreamloom.settings import work_dir

    source = Path(settings.path)
    options = PrepareOptions(
        resolution=settings.resolution,
        bucketing=settings.bucketing,
        bucket_step=settings.bucket_step,
        max_image_pixels=settings.max_image_pixels,
        max_total_pixels=settings.max_total_pixels,
        upscale=settings.upscale_small_images,
        condition=controlnet.condition if controlnet else None,
        canny_thresholds=(controlnet.canny_low, controlnet.canny_high) if controlnet else (100, 200),
    )
    if is_prepared(source):
        dataset = PreparedDataset.load(source)
        wanted = (options.resolution, options.bucketing, options.condition)
        found = (dataset.resolution, dataset.bucketing, dataset.condition)
        if found != wanted:
            raise DreamloomError(
                f"{source} was prepared with (resolution, bucketing, condition) = {found}, but the run asks "
                f"for {wanted}; prepare the originals again"
            )
        return dataset
    _check_folder(source)
    if into is not None:
        return prepare_dataset(source, Path(into), options)
    cached = work_dir() / "datasets" / f"{dataset_hash(source).split(':')[1][:16]}-{options.key()}"
    return prepare_dataset(source, cached, options)


def _check_folder(source: Path) -> None:
    if not source.exists():
        raise DreamloomError(f"data folder {source} does not exist")
    if not source.is_dir():
        raise DreamloomError(f"data path {source} is not a folder of images")


def _list_folder(folder: Path) -> _Listing:
    listing = _Listing([], {}, {}, [])
    for path in sorted(folder.iterdir()):
        if path.is_symlink() and not path.name.startswith("."):
            listing.problems.append((path.name, SYMLINK_PROBLEM))
            continue
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = path.suffix.lower()
        marker = Path(path.stem).suffix.lower()
        if suffix in IMAGE_SUFFIXES and marker in COMPANION_MARKERS:
            listing.companions.setdefault(Path(path.stem).stem, {})[marker] = path
        elif suffix in IMAGE_SUFFIXES:
            listing.images.append(path)
        elif suffix == CAPTION_SUFFIX:
            listing.captions[path.stem] = path
        elif suffix in UNSUPPORTED_IMAGE_SUFFIXES:
            listing.problems.append((path.name, f"{suffix} images cannot be decoded here; convert to PNG or JPEG"))
    return listing


def _read_caption(path: Path | None) -> str | None:
    if path is None:
        return None
    with open(path, "rb") as handle:
        raw = handle.read(4 * MAX_CAPTION_CHARS + 1)  # UTF-8 takes at most 4 bytes a character
    try:
        text = " ".join(raw.decode("utf-8").split())
    except UnicodeDecodeError:
        raise ImageProblem(f"caption {path.name} is not UTF-8 text") from None
    if len(raw) > 4 * MAX_CAPTION_CHARS or len(text) > MAX_CAPTION_CHARS:
        raise ImageProblem(f"caption {path.name} is longer than {MAX_CAPTION_CHARS} characters; shorten it")
    return text or None


def _resize_and_crop(
    image: Image.Image, target: tuple[int, int], resample=Image.Resampling.LANCZOS
) -> tuple[Image.Image, tuple[int, int]]:
    """Scale to cover ``target``, then crop its center; returns the crop's (top, left)."""
    scale = max(target[0] / image.width, target[1] / image.height)
    resized_size = (max(target[0], round(image.width * scale)), max(target[1], round(image.height * scale)))
    resized = image.resize(resized_size, resample)
    left = (resized.width - target[0]) // 2
    top = (resized.height - target[1]) // 2
    return resized.crop((left, top, left + target[0], top + target[1])), (top, left)


def _condition_image(candidate: _Candidate, prepared: Image.Image, options: PrepareOptions) -> Image.Image:
    if options.condition in conditions.EXTRACTED:
        return conditions.extract(prepared, options.condition, *options.canny_thresholds)
    companion = open_rgb(candidate.companion, options.max_image_pixels)
    if options.condition == "mask":  # nearest-neighbour keeps the mask hard-edged
        resized, _ = _resize_and_crop(companion, candidate.target, Image.Resampling.NEAREST)
        return conditions.binary_mask(resized)
    return _resize_and_crop(companion, candidate.target)[0]


def _write_prepared(
    source: Path, output: Path, candidates: list[_Candidate], options: PrepareOptions
) -> PreparedDataset:
    with staged_folder(output, exists="replace") as staging:
        (staging / "images").mkdir()
        if options.condition:
            (staging / "conditions").mkdir()
        dataset = PreparedDataset(
            staging,
            dataset_hash(source),
            options.resolution,
            options.bucketing,
            source=str(source.absolute()),
            condition=options.condition,
        )
        for index, candidate in enumerate(candidates):  # one image in memory at a time
            image = open_rgb(candidate.path, options.max_image_pixels)
            cropped, crop_top_left = _resize_and_crop(image, candidate.target)
            del image
            relative = f"images/{index:05d}.png"
            cropped.save(staging / relative)
            condition = None
            if options.condition:
                condition = f"conditions/{index:05d}.png"
                _condition_image(candidate, cropped, options).save(staging / condition)
            item = PreparedItem(
                relative, candidate.path.name, candidate.caption, cropped.size, candidate.size, crop_top_left
            )
            item.condition = condition
            dataset.items.append(item)
        dataset.write_manifest()
    dataset.root = output
    return dataset
