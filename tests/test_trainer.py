"""The training loop in-process (no Ray): the step, its options, resume and checkpoints."""

from pathlib import Path

import pytest
import torch

from dreamloom.training.checkpoint import load_training_state, save_training_state
from dreamloom.training.examples import Draw
from dreamloom.training.preflight import plan_job
from dreamloom.training.trainer import Trainer
from tests.helpers import draw_images, run_config


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return draw_images(tmp_path_factory.mktemp("photos"), count=4, captions=True)


def _trainer(photos: Path, tmp_path: Path, **overrides) -> Trainer:
    return Trainer(plan_job(run_config(photos, tmp_path / "out", **overrides)))


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.method.trainable_state(trainer.model).items()}


def test_lora_steps_change_only_the_lora_weights(photos, tmp_path):
    trainer = _trainer(photos, tmp_path, optimizer__learning_rate=1e-2)
    frozen_before = {k: v.clone() for k, v in trainer.model.unet.state_dict().items() if "lora" not in k}
    lora_before = _weights(trainer)
    assert lora_before and all("lora" in name for name in lora_before)
    losses = [trainer.train_step(step) for step in (1, 2, 3)]
    assert all(0 < loss < 10 for loss in losses)
    lora_after = _weights(trainer)
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before)
    frozen_after = {k: v for k, v in trainer.model.unet.state_dict().items() if "lora" not in k}
    assert all(torch.equal(frozen_before[k], frozen_after[k]) for k in frozen_before)


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_resuming_from_a_checkpoint_replays_the_same_training(photos, tmp_path, optimizer):
    options = {"optimizer__learning_rate": 1e-2, "optimizer__lr_scheduler": "cosine", "training__steps": 4}
    options["optimizer__name"] = optimizer
    straight = _trainer(photos, tmp_path / "a", **options)
    for step in range(1, 5):
        straight.train_step(step)

    first_half = _trainer(photos, tmp_path / "b", **options)
    for step in (1, 2):
        first_half.train_step(step)
    save_training_state(tmp_path / "ckpt", first_half.snapshot(2))
    resumed = _trainer(photos, tmp_path / "c", **options)
    state = load_training_state(tmp_path / "ckpt")
    resumed.restore(state)
    assert state.step == 2 and resumed.learning_rate == first_half.learning_rate
    for step in (3, 4):
        resumed.train_step(step)

    expected, actual = _weights(straight), _weights(resumed)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert type(resumed.optimizer).__name__ == {"adamw": "AdamW", "adafactor": "Adafactor"}[optimizer]
    slots = {slot for slots in resumed.optimizer.state_dict()["state"].values() for slot in slots}
    assert ("exp_avg" in slots) == (optimizer == "adamw")  # Adafactor keeps no first moment


def test_cached_latents_and_text_give_the_same_loss_as_encoding_every_step(photos, tmp_path):
    cached = _trainer(photos, tmp_path / "a")
    uncached = _trainer(photos, tmp_path / "b", training__cache_latents=False, training__cache_text_embeddings=False)
    assert cached.instance_examples.text is not None and uncached.instance_examples.text is None
    assert cached.train_step(1) == pytest.approx(uncached.train_step(1), rel=1e-4)
    assert uncached.instance_examples.latent_cache is None


def test_latents_are_encoded_when_first_drawn_and_then_reused(photos, tmp_path):
    """A run encodes no image it never draws, and none twice (issue 16: caching every image up
    front was fixed cost that diffusers' scripts, encoding each step, do not pay on short runs)."""
    trainer = _trainer(photos, tmp_path, data__random_flip=False)
    examples = trainer.instance_examples
    encoded = []
    encode = examples.model.encode_images
    examples.model.encode_images = lambda pixels: encoded.append(len(pixels)) or encode(pixels)
    assert examples.latent_cache == {}
    trainer.train_step(1)
    first_draw = trainer.instance_plan.micro_batch(0).indices
    assert sorted(examples.latent_cache) == sorted((i, False) for i in first_draw)
    for step in range(2, 2 * trainer.instance_plan.batches_per_epoch + 1):  # two epochs
        trainer.train_step(step)
    assert sorted(examples.latent_cache) == [(i, False) for i in range(len(examples))]
    assert encoded == [1] * len(examples)  # one at a time, once each


def test_gradient_checkpointing_and_channels_last_keep_the_numbers(photos, tmp_path):
    plain = _trainer(photos, tmp_path / "a")
    tuned = _trainer(photos, tmp_path / "b", training__gradient_checkpointing=True, training__channels_last=True)
    assert tuned.model.unet.is_gradient_checkpointing
    assert plain.train_step(1) == pytest.approx(tuned.train_step(1), rel=1e-4)


def test_text_encoder_lora_trains_the_text_encoder(photos, tmp_path):
    trainer = _trainer(photos, tmp_path, lora__train_text_encoder=True, optimizer__learning_rate=1e-2)
    assert trainer.instance_examples.text is None  # captions must be encoded each step now
    names = [name for name in trainer.method.trainable_state(trainer.model) if name.startswith("text_encoder_0.")]
    assert names
    before = _weights(trainer)
    trainer.train_step(1)
    after = _weights(trainer)
    assert any(not torch.equal(before[n], after[n]) for n in names)


def test_accumulation_noise_offset_snr_and_bf16_run(photos, tmp_path):
    trainer = _trainer(
        photos,
        tmp_path,
        training__gradient_accumulation_steps=2,
        training__noise_offset=0.1,
        training__snr_gamma=5.0,
        training__mixed_precision="bf16",
        data__random_flip=True,
    )
    assert trainer.precision.autocast_dtype == torch.bfloat16
    assert trainer.instance_examples.with_flips
    loss = trainer.train_step(1)
    assert torch.isfinite(torch.tensor(loss))
    assert trainer.instance_plan.micro_batch(1) != trainer.instance_plan.micro_batch(0)


def test_dreambooth_trains_the_whole_unet_with_a_prior_from_cached_class_images(photos, tmp_path):
    options = {
        "method": "dreambooth",
        "prior__class_prompt": "a photo of a ball",
        "prior__num_class_images": 2,
        "prior__generation_steps": 2,
    }
    trainer = _trainer(photos, tmp_path / "a", **options)
    folder = Path(trainer.job.class_images)
    generated = sorted(folder.glob("*.png"))
    assert [p.name for p in generated] == ["00000.png", "00001.png"]
    assert len(trainer.class_examples) == 2
    assert len(trainer.trainable) == len(list(trainer.model.unet.parameters()))
    assert trainer.train_step(1) > 0
    stamps = [p.stat().st_mtime_ns for p in generated]
    again = _trainer(photos, tmp_path / "b", **options)
    assert Path(again.job.class_images) == folder
    assert [p.stat().st_mtime_ns for p in sorted(folder.glob("*.png"))] == stamps  # reused, not regenerated


def test_dreambooth_with_its_text_encoder_trains_saves_and_loads_every_weight_of_both(photos, tmp_path):
    from dreamloom.methods.dreambooth import DreamBoothMethod
    from dreamloom.models import pipeline_from_components

    options = {"method": "dreambooth", "prior__enabled": False, "dreambooth__train_text_encoder": True}
    trainer = _trainer(
        photos, tmp_path, optimizer__learning_rate=1e-3, dreambooth__text_encoder_learning_rate=1e-2, **options
    )
    encoder = trainer.model.text_encoders[0]
    assert trainer.instance_examples.text is None  # captions are encoded by the training encoder each step
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [1e-3, 1e-2]
    assert len(trainer.trainable) == len(list(trainer.model.unet.parameters())) + len(list(encoder.parameters()))
    embeddings_before = encoder.get_input_embeddings().weight.detach().clone()
    trainer.train_step(1)
    assert not torch.equal(embeddings_before, encoder.get_input_embeddings().weight)  # the words' own vectors move
    trainer.method.save_artifact(trainer.model, tmp_path / "artifact")
    assert {path.name for path in (tmp_path / "artifact").iterdir()} == {"unet", "text_encoder"}

    base = _trainer(photos, tmp_path / "base", method="lora").model
    pipe = DreamBoothMethod.load_into(pipeline_from_components(base), tmp_path / "artifact", trainer.config)
    for name, parameter in pipe.text_encoder.named_parameters():
        assert torch.equal(parameter, dict(encoder.named_parameters())[name]), name
    unet_only = _trainer(photos, tmp_path / "unet-only", method="dreambooth", prior__enabled=False)
    unet_only.method.save_artifact(unet_only.model, tmp_path / "unet-only-artifact")
    assert [path.name for path in (tmp_path / "unet-only-artifact").iterdir()] == ["unet"]
    _refuses_incomplete_or_foreign_text_encoders(tmp_path / "artifact", trainer.config)


def _refuses_incomplete_or_foreign_text_encoders(artifact: Path, config) -> None:
    import json
    import shutil

    from dreamloom.errors import ArtifactError
    from dreamloom.methods.dreambooth import DreamBoothMethod
    from dreamloom.sizing import Architecture

    tiny = Architecture.for_base("tiny")
    DreamBoothMethod.check_fit(artifact, tiny, config)
    shutil.copytree(artifact / "text_encoder", artifact / "text_encoder_2")
    with pytest.raises(ArtifactError, match="holds text_encoder_2/, which tiny does not have"):
        DreamBoothMethod.check_fit(artifact, tiny, config)
    shutil.rmtree(artifact / "text_encoder_2")
    settings = json.loads((artifact / "text_encoder" / "config.json").read_text())
    (artifact / "text_encoder" / "config.json").write_text(json.dumps({**settings, "hidden_size": 8}))
    with pytest.raises(ArtifactError, match="text_encoder was built for another base: its hidden_size is 8"):
        DreamBoothMethod.check_fit(artifact, tiny, config)
    shutil.rmtree(artifact / "text_encoder")
    with pytest.raises(ArtifactError, match="trained its text encoders but holds none"):
        DreamBoothMethod.check_fit(artifact, tiny, config)


def test_sdxl_lora_with_buckets_and_a_prior_of_another_shape(tmp_path):
    wide = draw_images(tmp_path / "wide", count=2, size=(160, 80))
    trainer = Trainer(
        plan_job(
            run_config(
                wide,
                tmp_path / "out",
                base_model="tiny-sdxl",
                method="dreambooth-lora",
                data__bucketing=True,
                prior__class_prompt="a photo of a ball",
                prior__num_class_images=2,
                prior__generation_steps=2,
            )
        )
    )
    batch = trainer.instance_examples.batch(Draw([0], [False], [0.0]))
    assert batch.latents.shape[-1] > batch.latents.shape[-2]  # a wide bucket
    # original (h, w), crop (top, left), target (h, w): 160x80 scaled to 96x48, 4 px cut left and right
    assert batch.time_ids.tolist() == [[80.0, 160.0, 0.0, 4.0, 48.0, 88.0]]
    assert trainer.class_examples.batch(Draw([0], [False], [0.0])).latents.shape[-1] == 32  # square class images
    assert torch.isfinite(torch.tensor(trainer.train_step(1)))


@pytest.mark.slow
def test_compiled_unet_trains_to_the_same_numbers(photos, tmp_path):
    # Batch size 1: every step has the same shapes (with 3 photos and batches of 2, each epoch ends in
    # a batch of 1), so the UNet compiles once instead of twice (about 70 s each with a cold cache).
    eager = _trainer(photos, tmp_path / "a", training__batch_size=1)
    compiled = _trainer(photos, tmp_path / "b", training__batch_size=1, training__compile=True)
    assert compiled.denoiser is not compiled.model.unet
    start = _weights(eager)
    assert [compiled.train_step(s) for s in (1, 2)] == pytest.approx([eager.train_step(s) for s in (1, 2)], rel=1e-4)
    # Compare the updates, relative to their size: Adam moves a weight whose gradient is near its eps
    # by up to the learning rate on a rounding-level difference, so an elementwise bound is fragile.
    eager_update = torch.cat([(w - start[k]).flatten() for k, w in _weights(eager).items()])
    compiled_update = torch.cat([(w - start[k]).flatten() for k, w in _weights(compiled).items()])
    assert eager_update.norm() > 0
    assert (compiled_update - eager_update).norm() / eager_update.norm() < 1e-2


def test_own_class_images_replace_generated_ones(photos, tmp_path):
    own = draw_images(tmp_path / "class", count=3, seed=5)
    trainer = _trainer(
        photos, tmp_path, method="dreambooth-lora", prior__class_prompt="a photo of a ball", prior__class_data=str(own)
    )
    assert trainer.job.class_images is None and trainer.job.class_dataset_root
    assert len(trainer.class_examples) == 3
    assert trainer.class_examples.unique_captions == ["a photo of a ball"]
    assert trainer.train_step(1) > 0


def test_a_diverging_run_stops_at_the_step_it_diverged_and_publishes_nothing(photos, tmp_path):
    from dreamloom.errors import DreamloomError
    from dreamloom.training.local import train_in_process

    # A weight decay no one means: AdamW multiplies the weights by (1 - lr x decay) every step.
    config = run_config(photos, tmp_path / "out", training__steps=8, optimizer__weight_decay=1e38)
    with pytest.raises(
        DreamloomError, match=r"training diverged at step [2-8] of lora: the loss is (nan|inf)"
    ) as error:
        train_in_process(config)
    assert "learning rate (0.0001)" in str(error.value) and "weight decay 1e+38" in str(error.value)
    assert not config.output.exists() and not list(tmp_path.glob(".out*"))


def test_no_checkpoint_and_no_artifact_holds_a_weight_that_is_not_finite(photos, tmp_path):
    from safetensors.torch import save_file

    from dreamloom.artifacts import publish
    from dreamloom.data.prepare import PreparedDataset
    from dreamloom.errors import DreamloomError
    from dreamloom.training.bookkeeping import manifest_for

    trainer = _trainer(photos, tmp_path)
    trainer.train_step(1)
    name, tensor = next(iter(trainer.method.trainable_state(trainer.model).items()))
    with torch.no_grad():
        tensor.view(-1)[0] = float("nan")
    with pytest.raises(DreamloomError, match=rf"at step 1 of lora: 1 trained tensors are not finite \({name}\)"):
        trainer.snapshot(1)

    staged = tmp_path / "staged"
    staged.mkdir()
    save_file({"w": torch.tensor([1.0, float("inf")])}, str(staged / "weights.safetensors"))
    dataset = PreparedDataset.load(Path(trainer.job.dataset_root))
    manifest = manifest_for(trainer.config, trainer.job.base_model, dataset, 1)
    with pytest.raises(
        DreamloomError, match=r"1 tensors of the lora artifact are not finite \(e.g. weights\.safetensors:w\)"
    ):
        publish(staged, tmp_path / "published", manifest)
    assert not (tmp_path / "published").exists()


def test_sample_grids_are_sized_for_the_hardware_unless_the_config_says(photos, tmp_path):
    from dreamloom.models.architectures import KNOWN, build_unet
    from dreamloom.models.meta import empty_weights
    from dreamloom.training.trainer import sample_grid_size

    trainer = _trainer(photos, tmp_path)
    validation = trainer.config.validation.model_copy(update={"images_per_prompt": None, "steps": None})
    cpu = torch.device("cpu")
    with empty_weights():
        sd15_unet = build_unet(KNOWN["sd15"]["unet"])
    assert sample_grid_size(validation, cpu, trainer.model.unet) == (2, 25)
    assert sample_grid_size(validation, cpu, sd15_unet) == (1, 10)  # a real-size UNet on a CPU
    assert sample_grid_size(validation, torch.device("cuda"), sd15_unet) == (2, 25)
    asked = validation.model_copy(update={"images_per_prompt": 3, "steps": 7})
    assert sample_grid_size(asked, cpu, sd15_unet) == (3, 7)


def test_the_sample_grid_shows_its_denoising_progress(photos, tmp_path, capsys):
    trainer = _trainer(photos, tmp_path, validation__steps=3, validation__images_per_prompt=2)
    grid = trainer.render_samples()
    assert grid.size == (2 * 64, 64)
    assert "[samples] ████████████████████ 3/3 (100%)" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["lora", "hypernetwork", "controlnet", "dreambooth"])
def test_under_bf16_the_base_loads_in_bf16_and_what_trains_is_fp32(photos, tmp_path, method):
    from dreamloom.models import load_base_model, resolve_base_model
    from tests.helpers import method_config

    config = method_config(method, photos, tmp_path / method, training__mixed_precision="bf16", prior__enabled=False)
    trainer = Trainer(plan_job(config))
    trained = [p for group in trainer.method.parameter_groups(trainer.model) for p in group["params"]]
    assert trained and {p.dtype for p in trained} == {torch.float32}
    if method == "dreambooth":  # it trains the base's own weights: loaded fp32, not rounded through bf16
        base = load_base_model(resolve_base_model("tiny")).unet.state_dict()
        assert all(torch.equal(tensor, base[name]) for name, tensor in trainer.model.unet.state_dict().items())
    else:
        assert {p.dtype for p in trainer.model.unet.parameters() if not p.requires_grad} == {torch.bfloat16}
        assert {p.dtype for p in trainer.model.text_encoders[0].parameters() if not p.requires_grad} == {torch.bfloat16}
    assert 0 < trainer.train_step(1) < 10
