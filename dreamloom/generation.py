"""The one way dreamloom renders images in-process: a validated request through a diffusers
pipeline, image ``i`` of every prompt seeded ``seed + i``. The CLI's generate-local, evaluation,
the registry's pyfunc and training's sample grids all call ``generate``, so the same settings give
the same pictures wherever they are rendered."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from dreamloom.errors import DreamloomError
from dreamloom.progress import Progress
from dreamloom.samplers import DEFAULT_SAMPLER, make_scheduler, sampler_name


@dataclass(frozen=True)
class GenerationRequest:
    prompts: list[str]
    negative_prompt: str | None = None
    images_per_prompt: int = 1
    steps: int = 25
    guidance: float = 7.5
    sampler: str = DEFAULT_SAMPLER  # models.samplers: an A1111 or diffusers name
    seed: int = 0
    width: int | None = None
    height: int | None = None
    control_image: Image.Image | None = None  # ControlNet artifacts: the condition to follow
    control_scale: float = 1.0

    def __post_init__(self):
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise DreamloomError("give at least one non-empty --prompt")
        if not 1 <= self.steps <= 200:
            raise DreamloomError(f"steps must be between 1 and 200 (got {self.steps})")
        if not 0 <= self.guidance <= 50:
            raise DreamloomError(f"guidance must be between 0 and 50 (got {self.guidance})")
        if not 1 <= self.images_per_prompt <= 64:
            raise DreamloomError(f"images per prompt must be between 1 and 64 (got {self.images_per_prompt})")
        if not 0 <= self.control_scale <= 2:
            raise DreamloomError(f"control scale must be between 0 and 2 (got {self.control_scale})")
        object.__setattr__(self, "sampler", sampler_name(self.sampler))  # canonical; unknown names refused
        for side in (self.width, self.height):
            if side is not None and (side < 8 or side > 4096 or side % 8):
                raise DreamloomError(f"width and height must be multiples of 8 between 8 and 4096 (got {side})")


@torch.no_grad()
def generate(
    pipe, request: GenerationRequest, default_size: int | None = None, progress: str | None = None
) -> list[list[Image.Image]]:
    """Images per prompt; image ``i`` of every prompt uses seed ``request.seed + i``. With
    ``progress`` (a label), each denoising step advances a progress bar of that name."""
    size = default_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = request.width or size, request.height or size
    control = _control_arguments(pipe, request, width, height)
    pipe.scheduler = make_scheduler(request.sampler, pipe.scheduler.config)  # fresh: a scheduler keeps state
    if progress:
        control["callback_on_step_end"] = _advance(Progress(len(request.prompts) * request.steps, progress))
    rows = []
    for prompt in request.prompts:
        generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(request.images_per_prompt)]
        rows.append(
            pipe(
                prompt,
                negative_prompt=request.negative_prompt,
                num_images_per_prompt=request.images_per_prompt,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance,
                width=width,
                height=height,
                generator=generators,
                **control,
            ).images
        )
    return rows


def _advance(progress: Progress):
    def on_step_end(pipe, step, timestep, tensors):
        progress.update()
        return tensors

    return on_step_end


def _control_arguments(pipe, request: GenerationRequest, width: int, height: int) -> dict:
    if getattr(pipe, "controlnet", None) is None:
        if request.control_image is not None:
            raise DreamloomError("a control image needs a ControlNet artifact")
        return {}
    if request.control_image is None:
        raise DreamloomError("a ControlNet artifact needs a control image (--control-image FILE)")
    return {
        "image": request.control_image.convert("RGB").resize((width, height)),
        "controlnet_conditioning_scale": request.control_scale,
    }
