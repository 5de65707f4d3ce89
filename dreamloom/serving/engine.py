"""The generation engine behind the Triton model: one base pipeline, its img2img, inpainting and
ControlNet variants sharing every component, and the adapter cache.

It knows nothing about Triton: ``run`` takes checked requests and returns, per request, an image
(``uint8`` H x W x 3) or the error to send back. Requests that agree on the mode, sampler, size,
steps, guidance and the adapters that act on a whole batch (a hypernetwork, a ControlNet) run as
one batch through the pipeline, each sample with its own prompt, seed, LoRA-family adapters and
weights, and embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dreamloom.methods.peft_layers import per_sample_adapters
from dreamloom.samplers import make_scheduler
from dreamloom.serving.adapters import AdapterCache, LoadedAdapter, check_servable, sample_adapters, weights_size
from dreamloom.serving.protocol import (
    IMAGE_INPUTS,
    AdapterUse,
    ImageRequest,
    ModelFault,
    OverBudget,
    RequestError,
    decode_image,
)
from dreamloom.serving.routes import Routes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    base_model: str
    routes: Routes
    dreambooth: str | None = None  # an artifact folder whose UNet replaces the base's
    adapter_budget_mib: int = 512
    max_batch: int = 8
    device: str | None = None
    max_request_cost: float | None = None  # megapixel-steps one request may cost; None: no limit
    precision: str = "auto"  # the dtype the base is loaded in (models.precision.inference_dtype)
    channels_last: bool = False  # the UNet and VAE in channels-last memory format
    compile: bool = False  # torch.compile the VAE decoder, and the UNet while no adapter changes it


class Engine:
    def __init__(self, config: EngineConfig):
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        from dreamloom.artifacts import read_manifest
        from dreamloom.models.base import load_base_model, pipeline_from_components, resolve_base_model
        from dreamloom.models.precision import inference_dtype

        self.config = config
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = inference_dtype(device, config.precision)
        self.base = resolve_base_model(config.base_model)
        self.txt2img = pipeline_from_components(load_base_model(self.base, device, dtype))
        if config.dreambooth:
            folder = Path(config.dreambooth)
            manifest = read_manifest(folder)
            manifest.method_type.load_into(self.txt2img, folder, manifest.config)
        # The family's own img2img and inpainting pipelines (SD or SDXL), sharing every component;
        # SDXL's size and crop conditioning is left to them, as diffusers sets it.
        self.img2img = AutoPipelineForImage2Image.from_pipe(self.txt2img)
        self.inpaint = AutoPipelineForInpainting.from_pipe(self.txt2img)
        for pipe in (self.img2img, self.inpaint):
            pipe.set_progress_bar_config(disable=True)
        self.scheduler_config = self.txt2img.scheduler.config
        self.adapters = AdapterCache(self.txt2img, config.adapter_budget_mib * 2**20)
        self._methods: dict[str, type] = {}  # adapter key -> its training method
        self._sizes: dict[str, int] = {}  # adapter key -> bytes of weights
        self.native_size = self.txt2img.unet.config.sample_size * self.txt2img.vae_scale_factor
        self.compiled = self._accelerate()

    def _accelerate(self) -> list[str]:
        """The deployment's memory format and compilation; returns what was compiled. The UNet is
        compiled only while every deployed adapter leaves it as it is: attaching a LoRA-family
        adapter or an attention patch changes its modules, and each batch's mix would recompile it
        (minutes on a CPU), so such a version serves its UNet eager. Compiling happens at the first
        calls, which ``warm_up`` makes before the version reports ready."""
        pipe = self.txt2img
        if self.config.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if not self.config.compile:
            return []
        if pipe.unet.device.type == "cpu":
            import torch._inductor.config as inductor

            # Weights folded into the graph as constants (safe: what is compiled never changes once
            # served). On a CPU this is the gain: an SD 1.5 UNet step at 256 px in bf16 took 0.97 s
            # compiled with freezing, 1.19 s eager and 1.36 s compiled without it.
            inductor.freezing = True
        pipe.vae.decoder.compile()  # in place: the module keeps its type, every mode decodes through it
        compiled = ["vae decoder"]
        changing = sorted(
            f"{name}/{version}"
            for name, routes in self.config.routes.adapters.items()
            for version, folder in routes.versions.items()
            if not _leaves_unet_unchanged(Path(folder))
        )
        if changing:
            log.info("the UNet stays eager: adapters %s change its modules per request", ", ".join(changing[:5]))
        else:
            pipe.unet.compile()
            compiled.append("unet")
        return compiled

    def warm_up(self) -> None:
        """Compile before serving: a lone 64 px image, then a batch of two at 192 x 128 px, so the
        graphs compiled the second time take any batch size, width and height (torch.compile
        makes a dimension dynamic once it changes) and no request waits for a compile. The UNet
        branches on whether the latent divides by its upsampling factor: sizes in multiples of
        64 px (SD's) take the warmed graphs; other sizes compile once more, at first use.
        Nothing to do without ``compile``."""
        if not self.compiled:
            return
        import time
        from dataclasses import replace

        from dreamloom.serving.protocol import probe_request

        started = time.monotonic()
        log.info("compiling the %s (minutes on a CPU, before this version reports ready)", " and ".join(self.compiled))
        second = [replace(probe_request(), seed=seed, width=192, height=128) for seed in range(2)]
        for batch in ([probe_request()], second):
            for result in self.run(batch):
                if isinstance(result, Exception):
                    raise ModelFault(f"warming up the compiled model failed: {result}")
        log.info("compiled the %s in %.0f s", " and ".join(self.compiled), time.monotonic() - started)

    def run(self, requests: list[ImageRequest]) -> list[np.ndarray | RequestError]:
        results: list[np.ndarray | RequestError | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            try:
                self._check(request)
                key = ("solo", index) if request.solo else self._batch_key(request)
            except RequestError as exc:
                results[index] = exc
                continue
            groups.setdefault(key, []).append(index)
        for indices in groups.values():
            for chunk in self._chunks(requests, indices):
                try:
                    images = self._generate([requests[i] for i in chunk])
                except RequestError as exc:
                    images = [exc] * len(chunk)
                for index, image in zip(chunk, images, strict=True):
                    results[index] = image
        return results  # type: ignore[return-value]

    def _batch_key(self, request: ImageRequest) -> tuple:
        """Requests with equal keys share pipeline calls: what the request's own key holds (mode,
        sampler, size, steps...) and the adapters that act on a whole batch (a hypernetwork, a
        ControlNet) with their weights. LoRA-family adapters and embeddings act per sample, so
        requests naming different ones, or different weights, still batch."""
        whole_batch = tuple(
            (key, self._weight(request, use))
            for use, (key, folder) in self._resolved(request)
            if not self._method(key, folder).mixes_per_sample
        )
        return (*request.batch_key(), whole_batch)

    def _chunks(self, requests: list[ImageRequest], indices: list[int]):
        """Runs of at most ``max_batch`` requests whose adapters fit the adapter budget together;
        requests naming the same adapters are kept together, so a tight budget splits no more
        than it must."""
        indices = sorted(indices, key=lambda i: sorted(key for _, (key, _) in self._resolved(requests[i])))
        chunk: list[int] = []
        folders: dict[str, Path] = {}
        for index in indices:
            mine = {key: folder for _, (key, folder) in self._resolved(requests[index])}
            together = {**folders, **mine}
            if chunk and (len(chunk) == self.config.max_batch or self._bytes(together) > self.adapters.budget_bytes):
                yield chunk
                chunk, together = [], mine
            chunk.append(index)
            folders = together
        if chunk:
            yield chunk

    def _resolved(self, request: ImageRequest) -> list[tuple[AdapterUse, tuple[str, Path]]]:
        return [(use, self.config.routes.resolve(use.reference)) for use in request.adapters()]

    def _method(self, key: str, folder: Path):
        """The training method of a deployed adapter version (its manifest, read once: versions
        never change)."""
        from dreamloom.artifacts import read_manifest

        if key not in self._methods:  # a damaged deployed copy raises: a server fault (500), not a refusal
            self._methods[key] = read_manifest(folder).method_type
        return self._methods[key]

    def _bytes(self, folders: dict[str, Path]) -> int:
        for key, folder in folders.items():
            if key not in self._sizes:
                self._sizes[key] = weights_size(folder)
        return sum(self._sizes[key] for key in folders)

    @staticmethod
    def _weight(request: ImageRequest, use: AdapterUse) -> float:
        return request.adapter_scale if use.scale is None else use.scale

    @torch.no_grad()
    def _generate(self, batch: list[ImageRequest]) -> list[np.ndarray | RequestError]:
        """One pipeline call for the batch; a request whose adapters cannot load gets its error and
        the others still run."""
        keep = {key for request in batch for _, (key, _) in self._resolved(request)}
        loaded: list[list[tuple[LoadedAdapter, float]] | RequestError] = []
        for request in batch:
            try:
                wanted = self._resolved(request)
                adapters = self.adapters.get_all([where for _, where in wanted], keep=keep)
                loaded.append([(a, self._weight(request, use)) for a, (use, _) in zip(adapters, wanted, strict=True)])
            except RequestError as exc:
                loaded.append(exc)
        runnable = [(r, mine) for r, mine in zip(batch, loaded, strict=True) if not isinstance(mine, Exception)]
        images = iter(self._render([r for r, _ in runnable], [mine for _, mine in runnable]) if runnable else [])
        return [mine if isinstance(mine, Exception) else next(images) for mine in loaded]

    def _render(self, batch: list[ImageRequest], adapters: list[list[tuple[LoadedAdapter, float]]]) -> list[np.ndarray]:
        first = batch[0]
        width, height = first.width or self.native_size, first.height or self.native_size
        pipe, extra = self._pipeline_for(batch, adapters[0], width, height)
        pipe.scheduler = make_scheduler(first.sampler, self.scheduler_config)  # a fresh one: schedulers keep state
        if first.dry_run:
            return [np.zeros((8, 8, 3), np.uint8) for _ in batch]
        prompts = [_rewrite(r.prompt, mine) for r, mine in zip(batch, adapters, strict=True)]
        negative = None
        if any(r.negative_prompt for r in batch):
            negative = [_rewrite(r.negative_prompt, mine) for r, mine in zip(batch, adapters, strict=True)]
        samples = [sample_adapters(mine) for mine in adapters]
        with per_sample_adapters(self.txt2img, samples):
            output = pipe(
                prompt=prompts,
                negative_prompt=negative,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                generator=[torch.Generator("cpu").manual_seed(r.seed) for r in batch],
                output_type="np",
                **extra,
            )
        if not np.isfinite(output.images).all():
            raise ModelFault("the model produced non-finite pixels (NaN or infinity): its weights are broken")
        return [(np.clip(image, 0, 1) * 255).round().astype(np.uint8) for image in output.images]

    def verify(self) -> None:
        """Before this version serves: one small image from its base (its DreamBooth UNet, if any)
        and one through the adapter its deploy added, each finite and not blank. Raises otherwise,
        so that Triton never marks a version ready that cannot answer (the old one keeps serving)."""
        from dreamloom.serving.protocol import check_picture, probe_request

        routes = self.config.routes
        probes = {"the base model": probe_request()}
        if routes.verify_adapter:
            probes[f"adapter {routes.verify_adapter}"] = probe_request(routes.verify_mode, routes.verify_adapter)
        for what, request in probes.items():
            try:
                (result,) = self.run([request])
                if isinstance(result, Exception):
                    raise result
                check_picture(result, what)
            except Exception as exc:
                raise ModelFault(f"{what} cannot serve: {exc}") from exc

    def _pipeline_for(
        self, batch: list[ImageRequest], first_adapters: list[tuple[LoadedAdapter, float]], width, height
    ):
        """The pipeline for the batch's mode with its whole-batch adapters in place (the same for
        every request of a batch: they are in its key), and the mode's arguments."""
        from dreamloom.methods.controlnet import controlnet_pipeline

        first = batch[0]
        controlnets = [adapter for adapter, _ in first_adapters if adapter.controlnet is not None]
        if len(controlnets) > 1:
            raise RequestError("a request can follow one ControlNet; name only one")
        uses = dict(zip((a.key for a, _ in first_adapters), first.adapters(), strict=True))
        if controlnets and uses[controlnets[0].key].scale is not None:
            raise RequestError(f"{uses[controlnets[0].key].reference} is a ControlNet: set CONTROL_SCALE, not a weight")
        self.adapters.activate_patches([(a, w) for a, w in first_adapters if a.controlnet is None])
        if first.mode == "controlnet":
            if not controlnets:
                raise RequestError("mode controlnet needs ADAPTER naming a deployed ControlNet")
            controls = [_sized(decode_image("control_image", r.control_image), width, height) for r in batch]
            pipe = controlnet_pipeline(self.txt2img, controlnets[0].controlnet)
            pipe.set_progress_bar_config(disable=True)
            arguments = {"image": controls, "controlnet_conditioning_scale": first.control_scale}
            return pipe, arguments | {"width": width, "height": height}
        if controlnets:
            raise RequestError(
                f"adapter {uses[controlnets[0].key].reference} is a ControlNet: use mode controlnet with CONTROL_IMAGE"
            )
        if first.mode == "txt2img":
            return self.txt2img, {"width": width, "height": height}
        images = [_sized(decode_image("init_image", r.init_image), width, height) for r in batch]
        if first.mode == "img2img":
            return self.img2img, {"image": images, "strength": first.strength}
        masks = [_sized(decode_image("mask", r.mask, "L"), width, height) for r in batch]
        arguments = {"image": images, "mask_image": masks, "strength": first.strength}
        return self.inpaint, arguments | {"width": width, "height": height}

    def _check_cost(self, request: ImageRequest) -> None:
        budget = self.config.max_request_cost
        width, height = request.width or self.native_size, request.height or self.native_size
        cost = request_cost(width, height, request.steps)
        if budget is not None and cost > budget:
            raise OverBudget(
                f"this request costs {cost:.1f} megapixel-steps ({width}x{height} x {request.steps} steps); "
                f"this deployment allows {budget:g} per request: lower the size or the steps"
            )

    def _check(self, request: ImageRequest) -> None:
        """What can only be checked against this model: its cost, prompt length, adapter, the images."""
        self._check_cost(request)
        tokenizer = self.txt2img.tokenizer
        for name, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt)):
            count = len(tokenizer(text).input_ids)
            if count > tokenizer.model_max_length:
                raise RequestError(
                    f"{name} is {count} tokens; this model reads at most {tokenizer.model_max_length}: shorten it"
                )
        for _, (key, folder) in self._resolved(request):
            check_servable(key, self._method(key, folder))
        images = {name: decode_image(name, getattr(request, name)) for name in IMAGE_INPUTS.get(request.mode, ())}
        if "mask" in images and images["mask"].size != images["init_image"].size:
            (mw, mh), (iw, ih) = images["mask"].size, images["init_image"].size
            raise RequestError(f"MASK is {mw}x{mh} but INIT_IMAGE is {iw}x{ih}: send a mask of the image's size")


def request_cost(width: int, height: int, steps: int) -> float:
    """Megapixel-steps: what a request costs the denoiser, whatever the hardware."""
    return width * height * steps / 1e6


def _leaves_unet_unchanged(folder: Path) -> bool:
    """Whether a deployed adapter leaves the UNet's modules alone; a copy whose manifest cannot be
    read counts as changing it (its requests fail on their own when they come, as without compile)."""
    from dreamloom.artifacts import read_manifest

    try:
        return read_manifest(folder, verify=False).method_type.leaves_unet_unchanged
    except Exception:
        return False


def _rewrite(prompt: str, adapters: list[tuple[LoadedAdapter, float]]) -> str:
    """The prompt with each of the request's embeddings' placeholders turned into its private tokens."""
    for adapter, _ in adapters:
        prompt = adapter.rewrite(prompt)
    return prompt


def _sized(image, width: int, height: int):
    return image if image.size == (width, height) else image.resize((width, height))
