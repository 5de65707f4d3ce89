"""Each method in-process (no Ray): resume, artifacts, loading, and what each method promises."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dreamloom.errors import DreamloomError
from dreamloom.generation import GenerationRequest, generate
from dreamloom.inference import load_artifact_pipeline
from dreamloom.interop import import_a1111_hypernetwork as import_a1111
from dreamloom.methods import METHODS
from dreamloom.models import load_base_model, pipeline_from_components, resolve_base_model
from dreamloom.training.checkpoint import load_training_state, save_training_state
from dreamloom.training.local import train_in_process
from dreamloom.training.preflight import plan_job
from dreamloom.training.trainer import Trainer
from tests.helpers import draw_images, method_config

pytestmark = pytest.mark.slow  # every test trains a method (21 trainers in all) and loads its artifact

PROMPT = "a photo of <sks-ball> on a table"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return draw_images(tmp_path_factory.mktemp("photos"), count=4)


def _render(pipe, prompt: str = PROMPT, **request) -> np.ndarray:
    images = generate(pipe, GenerationRequest([prompt], images_per_prompt=2, steps=3, seed=5, **request), 64)[0]
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def _base_pipe(kind: str = "tiny"):
    return pipeline_from_components(load_base_model(resolve_base_model(kind)))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_resumes_from_a_checkpoint_exactly(method, photos, tmp_path):
    options = {"optimizer__learning_rate": 1e-2, "training__steps": 4}
    straight = Trainer(plan_job(method_config(method, photos, tmp_path / "a", **options)))
    for step in range(1, 5):
        straight.train_step(step)
    first = Trainer(plan_job(method_config(method, photos, tmp_path / "b", **options)))
    for step in (1, 2):
        first.train_step(step)
    save_training_state(tmp_path / "checkpoint", first.snapshot(2))
    resumed = Trainer(plan_job(method_config(method, photos, tmp_path / "c", **options)))
    resumed.restore(load_training_state(tmp_path / "checkpoint"))
    for step in (3, 4):
        resumed.train_step(step)
    expected = straight.method.trainable_state(straight.model)
    actual = resumed.method.trainable_state(resumed.model)
    assert expected and set(expected) == set(actual)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_textual_inversion_trains_only_the_new_rows_and_loads_in_plain_diffusers(photos, tmp_path):
    config = method_config("textual-inversion", photos, tmp_path / "ti", optimizer__learning_rate=5e-2)
    trainer = Trainer(plan_job(config))
    trainable = [p for p in trainer.model.text_encoders[0].parameters() if p.requires_grad]
    assert [tuple(p.shape) for p in trainable] == [(2, 32)]  # two vectors of width 32, nothing else
    artifact = train_in_process(config)
    tensors = load_file(str(artifact / "learned_embeds.safetensors"))
    # keyed by the token: diffusers registers it (and <sks-ball>_1) without being told; A1111 reads one key
    assert list(tensors) == ["<sks-ball>"] and tuple(tensors["<sks-ball>"].shape) == (2, 32)

    plain = _base_pipe()
    plain.load_textual_inversion(str(artifact / "learned_embeds.safetensors"))
    assert {"<sks-ball>", "<sks-ball>_1"} <= set(plain.tokenizer.get_vocab())
    loaded, _ = load_artifact_pipeline(artifact)
    base = _base_pipe()
    assert np.array_equal(_render(plain), _render(loaded))
    assert np.abs(_render(loaded) - _render(base)).mean() > 0.5
    other = "a photo of a red ball"  # the model itself is untouched: other prompts render as before
    assert np.array_equal(_render(loaded, other), _render(base, other))


def test_an_embedding_exports_for_a1111_named_after_its_token_and_old_layouts_still_load(photos, tmp_path, capsys):
    from safetensors.torch import save_file

    from dreamloom.artifacts import read_manifest, write_manifest
    from dreamloom.cli import main

    artifact = train_in_process(method_config("textual-inversion", photos, tmp_path / "ti", training__steps=1))
    assert main(["textual-inversion", "export-a1111", str(artifact), "--out", str(tmp_path / "embeddings")]) == 0
    exported = tmp_path / "embeddings" / "sks-ball.safetensors"  # A1111's prompt word is the file's name
    assert "write sks-ball" in capsys.readouterr().out
    original = load_file(str(artifact / "learned_embeds.safetensors"))
    assert torch.equal(load_file(str(exported))["<sks-ball>"], original["<sks-ball>"])
    rendered = _render(load_artifact_pipeline(artifact)[0])
    # a file in the older A1111 layout (emb_params, the token only in the run config) loads the same
    legacy = tmp_path / "legacy"
    shutil.copytree(artifact, legacy)
    save_file({"emb_params": original["<sks-ball>"]}, str(legacy / "learned_embeds.safetensors"))
    write_manifest(legacy, read_manifest(legacy, verify=False))
    assert np.array_equal(_render(load_artifact_pipeline(legacy)[0]), rendered)


def test_sdxl_textual_inversion_has_an_embedding_per_text_encoder(photos, tmp_path):
    config = method_config("textual-inversion", photos, tmp_path / "ti-xl", base_model="tiny-sdxl", training__steps=2)
    artifact = train_in_process(config)
    tensors = load_file(str(artifact / "learned_embeds.safetensors"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"clip_l": (2, 32), "clip_g": (2, 32)}
    pipe, _ = load_artifact_pipeline(artifact)
    assert "<sks-ball>_1" in pipe.tokenizer_2.get_vocab()
    assert _render(pipe).shape == (2, 64, 64, 3)


def test_textual_inversion_refuses_bad_tokens_before_training(photos, tmp_path):
    taken = method_config(
        "textual-inversion",
        photos,
        tmp_path / "a",
        textual_inversion__placeholder_token="dog",
        data__instance_prompt="a dog",
    )
    with pytest.raises(DreamloomError, match="already a token"):
        plan_job(taken)
    long_initializer = method_config(
        "textual-inversion", photos, tmp_path / "b", textual_inversion__initializer_token="sneakerbrandxyz"
    )
    with pytest.raises(DreamloomError, match="single common word"):
        plan_job(long_initializer)
    captioned = draw_images(tmp_path / "captioned", count=2, captions=True)  # captions name "sks ball"
    with pytest.raises(DreamloomError, match="must name the placeholder"):
        plan_job(method_config("textual-inversion", captioned, tmp_path / "c"))


def test_hypernetwork_strength_zero_is_the_base_and_one_is_not(photos, tmp_path):
    artifact = train_in_process(method_config("hypernetwork", photos, tmp_path / "hn", optimizer__learning_rate=1e-2))
    base = _render(_base_pipe())
    at_zero, _ = load_artifact_pipeline(artifact, strength=0.0)
    at_one, _ = load_artifact_pipeline(artifact, strength=1.0)
    assert np.array_equal(_render(at_zero), base)
    assert np.abs(_render(at_one) - base).mean() > 0.5
    assert len(load_file(str(artifact / "hypernetwork.safetensors"))) == 2 * 2 * 2  # (k, v) x 2 linears x (w, b)


def test_a1111_hypernetwork_files_import_without_unpickling_code(photos, tmp_path):
    artifact = train_in_process(method_config("hypernetwork", photos, tmp_path / "hn", optimizer__learning_rate=1e-2))
    tensors = load_file(str(artifact / "hypernetwork.safetensors"))
    pair = [{k.split(".", 3)[3]: v for k, v in tensors.items() if k.startswith(f"pairs.32.{i}.")} for i in (0, 1)]
    a1111 = {32: pair, "layer_structure": [1, 2, 1], "activation_func": "linear", "is_layer_norm": False}
    a1111.update({"use_dropout": False, "step": 3, "name": "ball", "sd_checkpoint_name": "tiny"})
    torch.save(a1111, tmp_path / "ball.pt")
    import_a1111(tmp_path / "ball.pt", "tiny", tmp_path / "imported")
    original, _ = load_artifact_pipeline(artifact, strength=1.0)
    imported, _ = load_artifact_pipeline(tmp_path / "imported", strength=1.0)
    assert np.array_equal(_render(imported), _render(original))

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({32: Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(DreamloomError, match="refused to unpickle"):
        import_a1111(tmp_path / "evil.pt", "tiny", tmp_path / "evil")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "evil").exists()


def test_controlnet_output_follows_its_condition(photos, tmp_path):
    # Both ends of the condition path start at zero (zero convolutions), so a few steps need a brisk rate.
    config = method_config("controlnet", photos, tmp_path / "cn", optimizer__learning_rate=3e-2, training__steps=6)
    artifact = train_in_process(config)
    pipe, _ = load_artifact_pipeline(artifact)
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::8] = 255
    dots = np.zeros((64, 64, 3), np.uint8)
    dots[::10, ::10] = 255
    first, second = Image.fromarray(stripes), Image.fromarray(dots)
    prompt = "a photo of sks ball"
    assert np.abs(_render(pipe, prompt, control_image=first) - _render(pipe, prompt, control_image=second)).mean() > 0.2
    off = {"control_scale": 0.0}
    assert np.array_equal(
        _render(pipe, prompt, control_image=first, **off), _render(pipe, prompt, control_image=second, **off)
    )
    with pytest.raises(DreamloomError, match="needs a control image"):
        _render(pipe, prompt)


def test_pivotal_artifact_loads_embedding_and_lora_in_one_call(photos, tmp_path):
    config = method_config("pivotal", photos, tmp_path / "pivotal", optimizer__learning_rate=1e-2, training__steps=4)
    trainer = Trainer(plan_job(config))
    embedding, lora = trainer.method.embedding.new_rows(trainer.model)[0], trainer.method.trainable_state(trainer.model)
    lora_name = next(name for name in lora if "lora_B" in name)
    history = []
    for step in range(1, 5):
        trainer.train_step(step)
        history.append((embedding.detach().clone(), lora[lora_name].detach().clone()))
    assert not torch.equal(history[0][0], history[1][0])  # the embedding trains for half the run ...
    assert torch.equal(history[1][0], history[3][0])  # ... then holds still
    assert not torch.equal(history[1][1], history[3][1])  # while the LoRA keeps learning

    artifact = train_in_process(config)
    assert {p.name for p in artifact.iterdir()} >= {"learned_embeds.safetensors", "pytorch_lora_weights.safetensors"}
    pipe, _ = load_artifact_pipeline(artifact)
    assert "<sks-ball>" in pipe.tokenizer.get_vocab()
    assert pipe.get_active_adapters() == ["dreamloom"]


def test_strength_is_refused_for_methods_without_one(photos, tmp_path):
    artifact = train_in_process(method_config("textual-inversion", photos, tmp_path / "ti", training__steps=1))
    with pytest.raises(DreamloomError, match="no strength"):
        load_artifact_pipeline(artifact, strength=0.5)


def test_a_run_names_the_folder_it_was_given_when_its_pictures_were_prepared_from_another(photos, tmp_path):
    """Prepared sets are cached by content; a run on a copy of the pictures reuses the cached set,
    and its lineage (MLflow's dataset input, the manifest) must still name the copy."""
    copy = tmp_path / "the same pictures elsewhere"
    shutil.copytree(photos, copy)
    first = plan_job(method_config("lora", photos, tmp_path / "a"))
    second = plan_job(method_config("lora", copy, tmp_path / "b"))
    assert second.dataset_root == first.dataset_root  # one cached set
    assert first.dataset().source == str(photos.absolute())
    assert second.dataset().source == str(copy.absolute())
