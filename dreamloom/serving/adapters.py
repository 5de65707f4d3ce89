"""Adapters on one shared base pipeline: loaded on first use, kept under a memory budget (least
recently used out), switched per request without reloading the base.

An adapter is a published artifact folder (``dreamloom.json`` + safetensors). LoRA and pivotal
LoRAs become named peft adapters on the UNet (``set_adapters`` switches them), textual-inversion
embeddings become tokens (they only act on prompts that name them), hypernetworks are attention
processors put in and taken out, ControlNets are separate modules handed to the ControlNet
pipeline. DreamBooth replaces the whole UNet, so it is served as its own model, not here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from dreamloom.artifacts import ArtifactManifest, read_manifest
from dreamloom.serving.protocol import RequestError

LORA_METHODS = {"lora", "dreambooth-lora"}
EMBEDDING_METHODS = {"textual-inversion"}
SERVABLE = LORA_METHODS | EMBEDDING_METHODS | {"pivotal", "hypernetwork", "controlnet"}


@dataclass
class LoadedAdapter:
    key: str  # "name/version"
    manifest: ArtifactManifest
    size_bytes: int
    lora_name: str | None = None
    placeholder: str | None = None  # the token prompts use, e.g. <sks-mug>
    tokens: list[str] = field(default_factory=list)  # its private tokens in the shared tokenizer
    hypernetwork: object | None = None
    controlnet: object | None = None

    @property
    def method(self) -> str:
        return self.manifest.method

    def rewrite(self, prompt: str) -> str:
        """The prompt with the placeholder replaced by this adapter's private token."""
        if not self.placeholder or not self.tokens:
            return prompt
        return prompt.replace(self.placeholder, self.tokens[0])


def weights_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*.safetensors"))


class AdapterCache:
    """Adapters attached to ``pipe`` (the text-to-image pipeline whose components every mode shares)."""

    def __init__(self, pipe, budget_bytes: int):
        self.pipe = pipe
        self.budget_bytes = budget_bytes
        self.loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self.loads = 0
        self.evictions = 0

    @property
    def used_bytes(self) -> int:
        return sum(adapter.size_bytes for adapter in self.loaded.values())

    def get_all(self, wanted: list[tuple[str, Path]]) -> list[LoadedAdapter]:
        """Several adapters for one request, all attached at once (none evicts another)."""
        keys = {key for key, _ in wanted}
        return [self.get(key, folder, keep=keys) for key, folder in wanted]

    def get(self, key: str, folder: Path, keep: set[str] = frozenset()) -> LoadedAdapter:
        """The adapter, attached (loading it, and evicting others, never ``keep``, to fit)."""
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key]
        manifest = read_manifest(folder)
        if manifest.method not in SERVABLE:
            raise RequestError(
                f"adapter {key} is a {manifest.method} model, which replaces the whole UNet: it is served as its "
                "own model; call that model instead of passing ADAPTER"
            )
        size = weights_size(folder)
        if size > self.budget_bytes:
            raise RequestError(f"adapter {key} ({size >> 20} MiB) is larger than the adapter memory budget")
        while self.used_bytes + size > self.budget_bytes:
            evictable = [loaded for loaded in self.loaded if loaded not in keep]
            if not evictable:
                raise RequestError(f"adapters {', '.join(sorted(keep))} together exceed the adapter memory budget")
            self.evict(evictable[0])
        adapter = self._attach(key, Path(folder), manifest, size)
        self.loaded[key] = adapter
        self.loads += 1
        return adapter

    def evict(self, key: str) -> None:
        adapter = self.loaded.pop(key)
        if adapter.lora_name:
            self.pipe.delete_adapters(adapter.lora_name)
        if adapter.tokens:
            self.pipe.unload_textual_inversion(adapter.tokens)
        self.evictions += 1

    def activate(self, weighted: list[tuple[LoadedAdapter, float]]) -> None:
        """Make exactly these adapters act on the next generation: LoRAs mixed by weight, a
        hypernetwork at its strength (embeddings act through prompts, ControlNets elsewhere)."""
        from dreamloom.methods.hypernetwork import install, uninstall

        loras = [(adapter.lora_name, scale) for adapter, scale in weighted if adapter.lora_name]
        if loras:
            self.pipe.enable_lora()
            self.pipe.set_adapters([name for name, _ in loras], adapter_weights=[scale for _, scale in loras])
        elif any(a.lora_name for a in self.loaded.values()):
            self.pipe.disable_lora()
        hypernetworks = [(adapter, scale) for adapter, scale in weighted if adapter.hypernetwork is not None]
        if len(hypernetworks) > 1:
            raise RequestError("a request can use one hypernetwork at a time; combine it with LoRAs instead")
        if hypernetworks:
            adapter, scale = hypernetworks[0]
            adapter.hypernetwork.set_strength(scale)
            install(self.pipe.unet, adapter.hypernetwork)
        else:
            uninstall(self.pipe.unet)

    def _attach(self, key: str, folder: Path, manifest: ArtifactManifest, size: int) -> LoadedAdapter:
        from dreamloom.methods.lora import WEIGHT_NAME

        adapter = LoadedAdapter(key, manifest, size)
        if manifest.method in LORA_METHODS | {"pivotal"}:
            adapter.lora_name = "a_" + key.replace("/", "_").replace(".", "_").replace("-", "_")
            self.pipe.load_lora_weights(str(folder), weight_name=WEIGHT_NAME, adapter_name=adapter.lora_name)
        if manifest.method in EMBEDDING_METHODS | {"pivotal"}:
            # A private token per adapter: a cached embedding acts only on requests that name its
            # adapter, and two versions of one concept can be cached side by side.
            adapter.placeholder = manifest.config["textual_inversion"]["placeholder_token"]
            private = f"{adapter.placeholder}@{key}"
            before = set(self.pipe.tokenizer.get_vocab())
            self.pipe.load_textual_inversion(_embedding(folder), token=private)
            adapter.tokens = [private, *sorted(set(self.pipe.tokenizer.get_vocab()) - before - {private})]
        if manifest.method == "hypernetwork":
            from dreamloom.methods.hypernetwork import load_hypernetwork

            adapter.hypernetwork = load_hypernetwork(folder).to(self.pipe.device, self.pipe.unet.dtype).eval()
        if manifest.method == "controlnet":
            from diffusers import ControlNetModel

            from dreamloom.methods.controlnet import CONTROLNET_FOLDER

            adapter.controlnet = ControlNetModel.from_pretrained(
                folder / CONTROLNET_FOLDER, torch_dtype=self.pipe.unet.dtype, use_safetensors=True
            ).to(self.pipe.device)
        return adapter


def _embedding(folder: Path):
    from safetensors.torch import load_file

    from dreamloom.methods.textual_inversion import EMBEDDING_FILE

    return load_file(str(folder / EMBEDDING_FILE))["emb_params"]
