"""Adapters on one shared base pipeline: loaded on first use, kept under a memory budget (least
recently used out), switched per request without reloading the base.

An adapter is a published artifact folder (``dreamloom.json`` + safetensors). Its method attaches
it to the shared pipeline (``TrainingMethod.serve``) and says what it put there: peft adapters
(LoRA, DoRA, LoHa, LoKr and pivotal tuning's LoRA, mixed by weight and per sample of a batch), private tokens (textual
inversion: they only act on prompts that name them), an attention patch (a hypernetwork), a
ControlNet (handed to the ControlNet pipeline). A method whose artifact replaces the whole UNet
(DreamBooth) is served as its own model, not here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from dreamloom.artifacts import ArtifactManifest, read_manifest
from dreamloom.errors import DreamloomError
from dreamloom.methods.base import ServedAdapter
from dreamloom.methods.peft_layers import SampleAdapters, component_modules, unwrap_empty_layers
from dreamloom.serving.protocol import ModelFault, RequestError


@dataclass
class LoadedAdapter:
    manifest: ArtifactManifest
    size_bytes: int
    served: ServedAdapter

    @property
    def key(self) -> str:
        return self.served.key

    @property
    def controlnet(self):
        return self.served.controlnet

    def rewrite(self, prompt: str) -> str:
        return self.served.rewrite(prompt)


def weights_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*.safetensors"))


def check_servable(key: str, method) -> None:
    """Refuse, naming what to do instead, a method whose artifact replaces the whole UNet."""
    if method.serves_as_model:
        raise RequestError(
            f"adapter {key} is a {method.name} model, which replaces the whole UNet: it is served as its "
            "own model; call that model instead of passing ADAPTER"
        )


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

    def get_all(self, wanted: list[tuple[str, Path]], keep: set[str] = frozenset()) -> list[LoadedAdapter]:
        """Several adapters for one request, all attached at once (none evicts another, nor any in
        ``keep``: the other requests of its batch)."""
        keys = {key for key, _ in wanted} | set(keep)
        return [self.get(key, folder, keep=keys) for key, folder in wanted]

    def get(self, key: str, folder: Path, keep: set[str] = frozenset()) -> LoadedAdapter:
        """The adapter, attached (loading it, and evicting others, never ``keep``, to fit)."""
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key]
        manifest = read_manifest(folder)
        method = manifest.method_type
        check_servable(key, method)
        size = weights_size(folder)
        if size > self.budget_bytes:
            raise RequestError(f"adapter {key} ({size >> 20} MiB) is larger than the adapter memory budget")
        while self.used_bytes + size > self.budget_bytes:
            evictable = [loaded for loaded in self.loaded if loaded not in keep]
            if not evictable:
                raise RequestError(f"adapters {', '.join(sorted(keep))} together exceed the adapter memory budget")
            self.evict(evictable[0])
        try:
            served = method.serve(self.pipe, Path(folder), manifest.config, key)
        except Exception as exc:
            for module in component_modules(self.pipe).values():
                unwrap_empty_layers(module)  # what a half-done attach left behind
            if isinstance(exc, DreamloomError):  # the artifact does not fit this base: the caller's to fix
                raise RequestError(f"adapter {key} cannot be attached: {exc}") from None
            # A damaged deployed copy (deploys verify each adapter, so the store changed since): a
            # server fault, answered 500 and counted as a failure.
            raise ModelFault(f"adapter {key} cannot be attached: {type(exc).__name__}") from exc
        adapter = LoadedAdapter(manifest, size, served)
        self.loaded[key] = adapter
        self.loads += 1
        return adapter

    def evict(self, key: str) -> None:
        self.loaded.pop(key).served.detach(self.pipe)
        self.evictions += 1

    def activate_patches(self, weighted: list[tuple[LoadedAdapter, float]]) -> None:
        """Install the attention patch (a hypernetwork) among these adapters at its weight, and take
        every other off. Patches act on a whole batch; peft adapters act per sample
        (``methods.peft_layers.per_sample_adapters``), embeddings through prompts, ControlNets
        through their pipeline. Weight 0 leaves a patch out."""
        patches = [(adapter.served, weight) for adapter, weight in weighted if weight != 0]
        patches = [(served, weight) for served, weight in patches if served.attention_patch is not None]
        if len(patches) > 1:
            raise RequestError("a request can use one hypernetwork at a time; combine it with LoRAs instead")
        for adapter in self.loaded.values():
            if adapter.served.attention_patch is not None and (not patches or adapter.served is not patches[0][0]):
                adapter.served.attention_patch.remove(self.pipe.unet)
        if patches:
            served, weight = patches[0]
            served.attention_patch.install(self.pipe.unet, weight)


def sample_adapters(weighted: list[tuple[LoadedAdapter, float]]) -> SampleAdapters:
    """What one sample applies of its adapters (``methods.peft_layers.per_sample_adapters``): each
    peft adapter at its weight. Weight 0 leaves an adapter out, so that 0 is the base for every
    kind (a DoRA magnitude would still act at scale 0)."""
    return tuple((name, weight) for adapter, weight in weighted if weight != 0 for name in adapter.served.peft_adapters)
