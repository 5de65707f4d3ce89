"""Textual Inversion: new token embeddings for a placeholder token; the model stays frozen.

The placeholder (``<concept>``, with ``<concept>_1`` ... for extra vectors, as diffusers names
them) is added to each tokenizer, and each text encoder's token embedding gets the new rows as
the only trainable parameter. The artifact is a few-KB safetensors file in the layout diffusers
and A1111 read: for SD 1.x/2.x one tensor keyed by the token itself, so
``pipe.load_textual_inversion(file)`` registers the right token without ``token=`` (A1111 takes
any single key and names the embedding after the file: ``export_a1111`` writes ``NAME.safetensors``);
for SDXL ``clip_l`` and ``clip_g``, one per text encoder, as A1111 and diffusers' docs load them.
The token is also in the file's metadata (``placeholder_token``). Files keyed ``emb_params``
(A1111's older layout, and dreamloom's before) still load.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.methods.base import Flag, ServedAdapter, Suitability, TrainingMethod
from dreamloom.models.base import BaseModelRef, LoadedBaseModel
from dreamloom.schema import Section

EMBEDDING_FILE = "learned_embeds.safetensors"
SDXL_KEYS = ("clip_l", "clip_g")
LEGACY_KEY = "emb_params"  # A1111's older single-tensor key

# Prompt templates for uncaptioned images, in the spirit of the Textual Inversion paper.
OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the small {}",
    "a good photo of a {}",
    "a rendering of a {}",
    "a photo of one {}",
    "a clean photo of the {}",
    "a photo of a nice {}",
]
STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a picture in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright picture in the style of {}",
    "a good painting in the style of {}",
    "an artwork in the style of {}",
]


class TextualInversionSettings(Section):
    placeholder_token: str = Field(
        "<concept>", pattern=r"^\S+$", description="The new token, e.g. <sks-shoe>; write it in your prompts"
    )
    num_vectors: int = Field(1, ge=1, le=75, description="Embedding vectors behind the token")
    initializer_token: str = Field("object", min_length=1, description="An existing single token to start from")
    learnable_property: Literal["object", "style"] = Field(
        "object", description="Prompt templates for uncaptioned images: objects or styles"
    )
    use_templates: bool = Field(
        True, description="Uncaptioned images cycle through templates instead of data.instance_prompt"
    )
    learning_rate: float | None = Field(None, gt=0, le=1, description="Default: optimizer.learning_rate")
    train_fraction: float = Field(
        1.0, gt=0, le=1, description="Pivotal tuning: share of the steps the embedding trains (then LoRA alone)"
    )

    @property
    def tokens(self) -> list[str]:
        """The placeholder and its extra vectors, named the way diffusers names them."""
        return [self.placeholder_token] + [f"{self.placeholder_token}_{i}" for i in range(1, self.num_vectors)]


FLAGS = {
    "placeholder_token": Flag("textual_inversion.placeholder_token", "the new token, e.g. <sks-shoe>"),
    "num_vectors": Flag("textual_inversion.num_vectors", "vectors behind the token", int),
    "initializer_token": Flag("textual_inversion.initializer_token", "an existing word to start from"),
}


class ExtendedTokenEmbedding(torch.nn.Module):
    """A frozen token embedding plus trainable rows for tokens added after it."""

    def __init__(self, base: torch.nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.new_rows = torch.nn.Parameter(new_rows)
        self.first_new_id = base.num_embeddings

    @property
    def weight(self) -> torch.Tensor:  # for code that reads the full table
        return torch.cat([self.base.weight, self.new_rows.to(self.base.weight.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        known = self.base(ids.clamp(max=self.first_new_id - 1))
        offsets = (ids - self.first_new_id).clamp(min=0, max=self.new_rows.shape[0] - 1)
        added = self.new_rows[offsets].to(known.dtype)
        return torch.where((ids >= self.first_new_id).unsqueeze(-1), added, known)


def token_embeddings(encoder) -> torch.nn.Module:
    """The CLIP embeddings module (transformers 5 dropped the ``text_model`` level)."""
    return getattr(encoder, "text_model", encoder).embeddings


class TextualInversionMethod(TrainingMethod):
    name = "textual-inversion"
    summary = "new rows of the token embedding for a placeholder token; the model stays frozen"
    artifact_kind = "embedding"
    artifact_files = (EMBEDDING_FILE,)
    sections = {"textual_inversion": TextualInversionSettings}
    flags = FLAGS
    leaves_unet_unchanged = True

    @property
    def settings(self) -> TextualInversionSettings:
        return self.config.textual_inversion

    @classmethod
    def placeholder(cls, config) -> str:
        return config.textual_inversion.placeholder_token

    @classmethod
    def trains_text_encoders(cls, config) -> bool:
        return True  # its embedding rows live inside the text encoders

    @classmethod
    def trainable_params(cls, arch, config) -> int:
        return config.textual_inversion.num_vectors * sum(arch.text_hidden_sizes)

    @classmethod
    def evaluation_kind(cls, config):
        style = config is not None and config.textual_inversion.learnable_property == "style"
        return "style" if style else "object"

    @classmethod
    def suitability(cls, needs) -> Suitability | None:
        if needs.new_to_base or needs.fine_detail:
            return None
        return Suitability(
            70,
            [
                "the base almost knows the concept: a learned token embedding is enough to steer it",
                "artifacts of a few KB, and the model itself is untouched",
            ],
        )

    @classmethod
    def check(cls, config, base: BaseModelRef, dataset) -> None:
        from transformers import AutoTokenizer

        settings = config.textual_inversion
        folders = ["tokenizer", "tokenizer_2"] if base.family == "sdxl" else ["tokenizer"]
        for folder in folders:
            revision = None if base.is_local else base.revision
            tokenizer = AutoTokenizer.from_pretrained(base.location, subfolder=folder, revision=revision)
            taken = [t for t in settings.tokens if len(tokenizer.tokenize(t)) == 1 and t in tokenizer.get_vocab()]
            if taken:
                raise DreamloomError(
                    f"placeholder {taken[0]!r} is already a token of {base.spec}; choose a new one, e.g. <sks-shoe>"
                )
            ids = tokenizer.encode(settings.initializer_token, add_special_tokens=False)
            if len(ids) != 1:
                raise DreamloomError(
                    f"initializer token {settings.initializer_token!r} is {len(ids)} tokens for {base.spec}; "
                    "use a single common word such as 'shoe' or 'painting'"
                )
        uncaptioned = [item.source for item in dataset.items if item.caption is None]
        missing = [
            item.source for item in dataset.items if item.caption and settings.placeholder_token not in item.caption
        ]
        if missing:
            raise DreamloomError(
                f"captions must name the placeholder {settings.placeholder_token!r}; it is missing from the "
                f"captions of {', '.join(missing[:5])}"
                + (f" ({len(uncaptioned)} uncaptioned images are fine)" if uncaptioned else "")
            )

    def captions_for(self, caption: str | None) -> list[str]:
        settings = self.settings
        if caption:
            texts = [caption]
        elif settings.use_templates:
            templates = STYLE_TEMPLATES if settings.learnable_property == "style" else OBJECT_TEMPLATES
            texts = [template.format(settings.placeholder_token) for template in templates]
        else:
            texts = [self.config.data.instance_prompt]
        return [self.expand(text) for text in texts]

    def expand(self, text: str) -> str:
        """``<concept>`` -> ``<concept> <concept>_1 ...``, as diffusers' pipelines expand it."""
        return text.replace(self.settings.placeholder_token, " ".join(self.settings.tokens))

    def attach(self, model: LoadedBaseModel) -> None:
        settings = self.settings
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
            tokenizer.add_tokens(settings.tokens)
            initializer = tokenizer.encode(settings.initializer_token, add_special_tokens=False)[0]
            embeddings = token_embeddings(encoder)
            base = embeddings.token_embedding
            rows = base.weight[initializer].detach().float().clone().repeat(settings.num_vectors, 1)
            embeddings.token_embedding = ExtendedTokenEmbedding(base, rows.to(base.weight.device))

    def new_rows(self, model: LoadedBaseModel) -> list[torch.nn.Parameter]:
        return [token_embeddings(encoder).token_embedding.new_rows for encoder in model.text_encoders]

    def trained_modules(self, model: LoadedBaseModel) -> dict[str, torch.nn.Module]:
        return {f"text_encoder_{i}": encoder for i, encoder in enumerate(model.text_encoders)}

    def parameter_groups(self, model: LoadedBaseModel) -> list[dict]:
        learning_rate = self.settings.learning_rate or self.config.optimizer.learning_rate
        return [{"params": self.new_rows(model), "lr": learning_rate, "weight_decay": 0.0}]

    def save_artifact(self, model: LoadedBaseModel, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        rows = [row.detach().float().cpu().contiguous() for row in self.new_rows(model)]
        token = self.settings.placeholder_token
        tensors = dict(zip(SDXL_KEYS, rows, strict=True)) if model.is_sdxl else {token: rows[0]}
        save_file(
            tensors, str(folder / EMBEDDING_FILE), metadata={"placeholder_token": self.settings.placeholder_token}
        )

    @classmethod
    def check_fit(cls, folder: Path, arch, config=None) -> None:
        """Each embedding's width is its text encoder's (meta modules cannot take new token rows)."""
        from safetensors import safe_open

        path = Path(folder) / EMBEDDING_FILE
        if not path.is_file():
            raise ArtifactError(f"the {cls.name} artifact lacks {EMBEDDING_FILE}")
        with safe_open(str(path), "pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        keys = SDXL_KEYS if arch.family == "sdxl" else tuple(shapes)[:1] if len(shapes) == 1 else ("<token>",)
        widths = dict(zip(keys, arch.text_hidden_sizes, strict=False))
        if set(shapes) != set(widths):
            raise ArtifactError(f"{EMBEDDING_FILE} holds {sorted(shapes)}; a {arch.family} base reads {sorted(widths)}")
        for key, shape in shapes.items():
            if len(shape) != 2 or shape[0] < 1 or shape[1] != widths[key]:
                raise ArtifactError(
                    f"{EMBEDDING_FILE}: {key} has shape {list(shape)}; {arch.name} needs [vectors, {widths[key]}]"
                )

    @classmethod
    def load_into(cls, pipe, folder: Path, config=None, strength: float = 1.0):
        token, tensors = read_embedding(Path(folder), config)
        for tokenizer, encoder, rows in _per_text_encoder(pipe, tensors):
            pipe.load_textual_inversion(rows, token=token, text_encoder=encoder, tokenizer=tokenizer)
        return pipe

    @classmethod
    def serve(cls, pipe, folder: Path, config, key: str) -> ServedAdapter:
        """A private token per adapter: a cached embedding acts only on requests that name its
        adapter, and two versions of one concept can be cached side by side."""
        placeholder, tensors = read_embedding(Path(folder), config)
        private = f"{placeholder}@{key}"
        before = set(pipe.tokenizer.get_vocab())
        for tokenizer, encoder, rows in _per_text_encoder(pipe, tensors):
            pipe.load_textual_inversion(rows, token=private, text_encoder=encoder, tokenizer=tokenizer)
        tokens = [private, *sorted(set(pipe.tokenizer.get_vocab()) - before - {private})]
        return ServedAdapter(key, cls.name, placeholder=placeholder, tokens=tokens)


def read_embedding(folder: Path, config) -> tuple[str, dict[str, torch.Tensor]]:
    """The placeholder token and the embedding rows of a textual-inversion file."""
    path = folder / EMBEDDING_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} lacks {EMBEDDING_FILE}: it is not a complete artifact")
    with safe_open(str(path), "pt") as handle:
        token = (handle.metadata() or {}).get("placeholder_token")
        keys = list(handle.keys())
    if token is None and len(keys) == 1 and keys[0] != LEGACY_KEY:
        token = keys[0]  # diffusers' layout: the key is the token
    if token is None and config is not None:
        token = config.textual_inversion.placeholder_token
    if not token:
        raise ArtifactError(f"{path} does not say which token it learned (no placeholder_token in its metadata)")
    return token, load_file(str(path))


def export_a1111(folder: Path, target_folder: Path) -> Path:
    """The embedding as A1111 reads it from its ``embeddings`` folder: the same tensors, in a file
    named after the token (A1111's prompt word), brackets and characters unsafe in file names
    dropped (``<sks-mug>`` -> ``sks-mug.safetensors``)."""
    token, tensors = read_embedding(Path(folder), None)
    name = re.sub(r"[^A-Za-z0-9._-]+", "", token.strip("<>")) or "embedding"
    target = Path(target_folder) / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata={"placeholder_token": token})
    return target


def _per_text_encoder(pipe, tensors: dict[str, torch.Tensor]):
    """(tokenizer, text encoder, rows) for each text encoder: one tensor (keyed by its token, or
    ``emb_params``) for SD 1.x/2.x, SDXL's ``clip_l`` and ``clip_g``."""
    if len(tensors) == 1 and not set(tensors) & set(SDXL_KEYS):
        return [(pipe.tokenizer, pipe.text_encoder, next(iter(tensors.values())))]
    missing = [key for key in SDXL_KEYS if key not in tensors]
    if missing or getattr(pipe, "text_encoder_2", None) is None:
        raise ArtifactError(f"the embedding holds {sorted(tensors)}, which does not fit this base's text encoders")
    return list(
        zip(
            (pipe.tokenizer, pipe.tokenizer_2),
            (pipe.text_encoder, pipe.text_encoder_2),
            (tensors[key] for key in SDXL_KEYS),
            strict=True,
        )
    )
