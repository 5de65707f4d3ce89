"""The one training loop every method plugs into.

``Trainer`` owns one worker's share of a run: the base model, the method's trainable parts, the
in-memory examples, the optimizer and learning-rate schedule, precision, and the denoising step.
It knows nothing about Ray: ``dreamloom.training.worker`` drives it under Ray Train (DDP across
workers), and ``bench/train.py`` drives it in-process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import ModelMixin
from diffusers.optimization import get_scheduler
from diffusers.utils import make_image_grid
from PIL import Image

from dreamloom.config import ValidationSettings
from dreamloom.data.prepare import PreparedDataset
from dreamloom.errors import Refused
from dreamloom.generation import GenerationRequest, generate
from dreamloom.models.base import (
    LoadedBaseModel,
    TextConditioning,
    load_base_model,
)
from dreamloom.progress import Progress
from dreamloom.training.checkpoint import TrainingState
from dreamloom.training.diffusion import denoising_target, per_sample_loss, sample_noise, sample_timesteps
from dreamloom.training.examples import Batch, BatchPlan, ExampleSet, load_class_images
from dreamloom.training.job import TrainJob
from dreamloom.training.precision import resolve_precision
from dreamloom.training.prior import generate_class_images, missing_class_images


def _identity(module: torch.nn.Module) -> torch.nn.Module:
    return module


class Trainer:
    def __init__(
        self,
        job: TrainJob,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
        wrap: Callable[[torch.nn.Module], torch.nn.Module] = _identity,
        barrier: Callable[[], None] = lambda: None,
        show_progress: bool = True,
    ):
        self.job, self.config = job, job.config
        self.device, self.rank, self.world = torch.device(device), rank, world
        settings = self.config.training
        self.precision = resolve_precision(settings.mixed_precision, self.device)
        # Loaded in the frozen weights' dtype (half the peak memory of loading fp32 and casting
        # after); what the method adds is brought to fp32 once attached. A method that trains the
        # base's own weights loads fp32: rounding them to bf16 first would change every one.
        method_type = self.config.method_type
        load_dtype = torch.float32 if method_type.trains_base_weights else self.precision.frozen_dtype
        self.model: LoadedBaseModel = load_base_model(job.base_model, self.device, load_dtype)
        self.class_examples = None
        if self.config.prior_enabled:
            class_images, class_captions = self._class_images(barrier, show_progress)
        self.method = method_type(self.config)
        torch.manual_seed(settings.seed)  # new weights (e.g. LoRA matrices) start the same on every run
        self.method.attach(self.model)
        self._place_frozen_weights()
        self._upcast_trained_weights()
        cache_text = settings.cache_text_embeddings and not self.method.trains_text_encoder
        example_options = {
            "cache_latents": settings.cache_latents,
            "cache_text": cache_text,
            "with_flips": self.config.data.random_flip,
        }
        dataset = PreparedDataset.load(Path(job.dataset_root))
        self.instance_examples = ExampleSet.from_prepared(
            dataset, self.method.captions_for, self.model, **example_options
        )
        self.instance_plan = self._plan(self.instance_examples)
        if self.config.prior_enabled:
            self.class_examples = self._class_example_set(class_images, class_captions, example_options)
            self.class_plan = self._plan(self.class_examples)
        self.trainable = [p for group in self.method.parameter_groups(self.model) for p in group["params"]]
        self.optimizer = self._optimizer()
        self.lr_scheduler = self._lr_scheduler()
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if self.precision.needs_grad_scaler else None
        self.denoiser, self.text_encoders_for_training = self._prepare_modules(wrap)
        self.generator = torch.Generator(self.device)

    # ----- set-up -----

    def _class_images(self, barrier, show_progress: bool) -> tuple[list[Image.Image], list[str]]:
        prior, resolution = self.config.prior, self.config.data.resolution
        if self.job.class_dataset_root:
            dataset = PreparedDataset.load(Path(self.job.class_dataset_root))
            images = [Image.open(dataset.root / item.image).convert("RGB") for item in dataset.items]
            return images, [[item.caption or prior.class_prompt or ""] for item in dataset.items]
        folder = Path(self.job.class_images)
        # Image i belongs to rank i % world; each rank fills its own gaps.
        mine = [i for i in missing_class_images(folder, prior.num_class_images) if i % self.world == self.rank]
        if mine:
            progress = Progress(len(mine), f"class images, rank {self.rank}") if show_progress else None
            generate_class_images(self.model, folder, prior, resolution, mine, progress.update if progress else None)
        barrier()
        if missing_class_images(folder, prior.num_class_images):
            raise RuntimeError(
                f"class images missing in {folder} after generation; on several nodes the work "
                "folder (DREAMLOOM_HOME) must be shared storage"
            )
        images = load_class_images(folder)[: prior.num_class_images]
        return images, [[prior.class_prompt]] * len(images)

    def _class_example_set(self, images, captions, options) -> ExampleSet:
        time_ids = torch.tensor([[i.height, i.width, 0, 0, i.height, i.width] for i in images], dtype=torch.float32)
        return ExampleSet(images, captions, time_ids, self.model, **options)

    def _plan(self, examples: ExampleSet) -> BatchPlan:
        settings = self.config.training
        return BatchPlan(
            examples.sizes, settings.batch_size, settings.seed, self.rank, self.world, self.config.data.random_flip
        )

    def _place_frozen_weights(self) -> None:
        """Frozen weights in the half-precision dtype where it runs natively (trainable ones stay fp32)."""
        dtype = self.precision.frozen_dtype
        if dtype == torch.float32:
            return
        frozen_vae_dtype = torch.float32 if (self.model.is_sdxl and dtype == torch.float16) else dtype
        self.model.vae.to(dtype=frozen_vae_dtype)
        for module in [self.model.unet, *self.model.text_encoders]:
            for parameter in module.parameters():
                if not parameter.requires_grad:
                    parameter.data = parameter.data.to(dtype)

    def _upcast_trained_weights(self) -> None:
        """Trainable weights (and so gradients and optimizer state) in fp32, whatever the base was
        loaded in: an adapter attached to a bf16 layer, or a module copied from one, starts in bf16."""
        for group in self.method.parameter_groups(self.model):
            for parameter in group["params"]:
                if parameter.dtype != torch.float32:
                    parameter.data = parameter.data.float()

    def _optimizer(self) -> torch.optim.Optimizer:
        settings, training = self.config.optimizer, self.config.training
        groups = self.method.parameter_groups(self.model)
        scale = training.batch_size * training.gradient_accumulation_steps * self.world if settings.scale_lr else 1
        for group in groups:
            group["lr"] = group.get("lr", settings.learning_rate) * scale
        if settings.name == "adafactor":
            from transformers.optimization import Adafactor

            # A fixed learning rate, as kohya's sd-scripts run it for SDXL (no relative step, no
            # parameter scaling): the schedule stays the run's own.
            return Adafactor(
                groups,
                lr=settings.learning_rate * scale,
                weight_decay=settings.weight_decay,
                scale_parameter=False,
                relative_step=False,
                warmup_init=False,
            )
        return torch.optim.AdamW(
            groups,
            lr=settings.learning_rate * scale,
            betas=(settings.adam_beta1, settings.adam_beta2),
            eps=settings.adam_epsilon,
            weight_decay=settings.weight_decay,
            fused=True,
        )

    def _lr_scheduler(self):
        settings = self.config.optimizer
        return get_scheduler(
            settings.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=settings.lr_warmup_steps,
            num_training_steps=self.config.training.steps,
            num_cycles=settings.lr_num_cycles,
            power=settings.lr_power,
        )

    def _prepare_modules(self, wrap) -> tuple[torch.nn.Module, list | None]:
        """The denoiser and the text encoders as the step calls them: compiled if asked, wrapped
        for DDP when they hold trainable parameters."""
        training = self.config.training
        for module in self.method.trained_modules(self.model).values():
            module.train()
        denoiser = self.method.denoiser(self.model)
        if training.gradient_checkpointing:
            for module in denoiser.modules():  # the UNet, and a ControlNet beside it
                if isinstance(module, ModelMixin) and module._supports_gradient_checkpointing:
                    module.enable_gradient_checkpointing()
        if training.channels_last:
            denoiser.to(memory_format=torch.channels_last)
        forward = torch.compile(denoiser) if training.compile else denoiser
        forward = wrap(forward) if _has_trainable(denoiser) else forward
        if not self.method.trains_text_encoder:
            return forward, None
        encoders = []
        for encoder in self.model.text_encoders:
            if training.gradient_checkpointing:
                encoder.gradient_checkpointing_enable()
            encoders.append(wrap(encoder) if _has_trainable(encoder) else encoder)
        return forward, encoders

    # ----- the step -----

    def train_step(self, step: int) -> float:
        """One optimizer step (``gradient_accumulation_steps`` micro-batches); returns the loss."""
        self._seed_step(step)
        self.method.before_step(step, self.optimizer)
        accumulation = self.config.training.gradient_accumulation_steps
        total = 0.0
        for micro in range(accumulation):
            last = micro == accumulation - 1
            with self._gradient_sync(enabled=last):
                loss = self._micro_batch_loss((step - 1) * accumulation + micro) / accumulation
                if not torch.isfinite(loss):  # before backward: a NaN never reaches the weights through it
                    raise TrainingDiverged(self._diverged(step, f"the loss is {loss.item()}"))
                if self.grad_scaler:
                    self.grad_scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += loss.detach().item()
        self._optimizer_step()
        return total

    def _seed_step(self, step: int) -> None:
        # Noise, timesteps and dropout are a function of (seed, rank, step): resuming replays them.
        seed = (self.config.training.seed * 1_000_003 + self.rank * 7_919 + step) % 2**63
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)

    def _gradient_sync(self, enabled: bool):
        if enabled:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for module in [self.denoiser, *(self.text_encoders_for_training or [])]:
            if hasattr(module, "no_sync"):
                stack.enter_context(module.no_sync())
        return stack

    def _micro_batch_loss(self, index: int) -> torch.Tensor:
        text_encoders = self.text_encoders_for_training
        with self.precision.autocast():
            draw = self.instance_plan.micro_batch(index)
            instance = self.instance_examples.batch(draw, text_encoders, self.generator)
        if self.class_examples is None:
            return self._denoising_loss(instance).mean()
        with self.precision.autocast():
            prior = self.class_examples.batch(self.class_plan.micro_batch(index), text_encoders, self.generator)
        weight = self.config.prior.weight
        if instance.latents.shape[1:] == prior.latents.shape[1:]:
            losses = self._denoising_loss(_concat(instance, prior))
            count = instance.latents.shape[0]
            return losses[:count].mean() + weight * losses[count:].mean()
        return self._denoising_loss(instance).mean() + weight * self._denoising_loss(prior).mean()

    def _denoising_loss(self, batch: Batch) -> torch.Tensor:
        scheduler = self.model.noise_scheduler
        training = self.config.training
        latents = batch.latents
        if training.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        noise = sample_noise(latents, training.noise_offset, self.generator)
        timesteps = sample_timesteps(latents.shape[0], scheduler, self.generator, latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        conditioning = self.model.unet_conditioning(batch.text, batch.time_ids)
        with self.precision.autocast():
            prediction = self.method.predict_noise(self.denoiser, noisy, timesteps, conditioning, batch)
        target = denoising_target(scheduler, latents, noise, timesteps)
        return per_sample_loss(prediction, target, timesteps, scheduler, training.snr_gamma)

    def _optimizer_step(self) -> None:
        max_norm = self.config.optimizer.max_grad_norm
        if self.grad_scaler:
            self.grad_scaler.unscale_(self.optimizer)
        if max_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        if self.grad_scaler:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def learning_rate(self) -> float:
        return float(self.lr_scheduler.get_last_lr()[0])

    # ----- state, samples, artifact -----

    def _diverged(self, step: int, what: str) -> str:
        training, optimizer = self.config.training, self.config.optimizer
        return (
            f"training diverged at step {step} of {self.config.method}: {what}. Likely causes: the "
            f"learning rate ({self.learning_rate:g}) is too high for {self.config.method}, "
            f"{training.mixed_precision} precision overflowed (try bf16, or no mixed precision), or "
            f"extreme settings (weight decay {optimizer.weight_decay:g}, noise offset {training.noise_offset:g}). "
            "Nothing was published; checkpoints before this step are intact."
        )

    def snapshot(self, step: int) -> TrainingState:
        """The resumable state after ``step``; refused when a trained tensor is no longer finite (a
        checkpoint of NaN weights would make every resume diverge again)."""
        state = self.method.trainable_state(self.model)
        broken = [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]
        if broken:
            raise TrainingDiverged(self._diverged(step, f"{len(broken)} trained tensors are not finite ({broken[0]})"))
        return TrainingState(
            step=step,
            trainable=self.method.trainable_state(self.model),
            optimizer=self.optimizer.state_dict(),
            lr_scheduler=self.lr_scheduler.state_dict(),  # lambdas are saved as None: JSON-safe
        )

    def restore(self, state: TrainingState) -> None:
        self.method.load_trainable_state(self.model, state.trainable)
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_scheduler.load_state_dict(state.lr_scheduler)

    @torch.no_grad()
    def render_samples(self) -> Image.Image:
        """A grid: one row per validation prompt, ``images_per_prompt`` seeded images each."""
        validation, resolution = self.config.validation, self.config.data.resolution
        images, steps = sample_grid_size(validation, self.device, self.model.unet)
        request = GenerationRequest(
            list(self.config.validation_prompts),
            images_per_prompt=images,
            steps=steps,
            guidance=validation.guidance,
            seed=validation.seed,
            width=resolution,
            height=resolution,
            **self.method.sample_inputs(self.instance_examples),
        )
        modules = self.method.trained_modules(self.model).values()
        for module in modules:
            module.eval()
        try:
            with self.precision.autocast():
                rows = generate(self.method.sample_pipeline(self.model), request, progress="samples")
        finally:
            for module in modules:
                module.train()
        return make_image_grid([image for row in rows for image in row], rows=len(rows), cols=len(rows[0]))

    def save_artifact(self, folder: Path) -> None:
        self.method.save_artifact(self.model, folder)


# SD 1.5's UNet has 860M parameters; on a CPU each of its denoising steps takes seconds.
REAL_SIZE_UNET_PARAMS = 100_000_000


def sample_grid_size(validation: ValidationSettings, device: torch.device, unet: torch.nn.Module) -> tuple[int, int]:
    """(images per prompt, denoising steps) of a sample grid: what the config says, else 2 x 25
    where sampling is cheap (a GPU, a small UNet) and 1 x 10 for a real-size UNet on a CPU, where
    the default grid would cost minutes, more than a short run's training."""
    cheap = device.type == "cuda" or sum(p.numel() for p in unet.parameters()) < REAL_SIZE_UNET_PARAMS
    images, steps = (2, 25) if cheap else (1, 10)
    return validation.images_per_prompt or images, validation.steps or steps


class TrainingDiverged(Refused):
    """The loss or the trained weights stopped being finite numbers."""


def _has_trainable(module: torch.nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in module.parameters())


def _concat(first: Batch, second: Batch) -> Batch:
    time_ids = None if first.time_ids is None else torch.cat([first.time_ids, second.time_ids])
    return Batch(torch.cat([first.latents, second.latents]), TextConditioning.cat([first.text, second.text]), time_ids)
