import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamloom.errors import DreamloomError
from dreamloom.models import load_base_model, resolve_base_model
from dreamloom.models.tiny import build_tiny_pipeline, ensure_tiny
from dreamloom.models.tokenizer import build_clip_tokenizer


def test_clip_tokenizer_matches_openai_clip_ids():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408
    # Ids of openai/clip-vit-large-patch14's tokenizer ("sks" is the usual DreamBooth token).
    assert tokenizer("a photo of sks dog").input_ids == [49406, 320, 1125, 539, 48136, 1929, 49407]
    assert tokenizer.model_max_length == 77


def test_tiny_is_deterministic_for_a_seed_and_differs_across_seeds():
    first, second, other = build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        a, b, c = (getattr(p, name).state_dict() for p in (first, second, other))
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert not all(torch.equal(a[k], c[k]) for k in a), name


def test_tiny_is_built_once_into_the_cache_and_reused(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DREAMLOOM_CACHE", str(tmp_path))
    folder = ensure_tiny("tiny")
    assert folder.parent == tmp_path / "models"
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert ensure_tiny("tiny") == folder
    assert weights.stat().st_mtime_ns == built_at
    assert not list((tmp_path / "models").glob(".*"))  # no staging folders left


@pytest.mark.parametrize(
    ("kind", "family", "cross_attention", "pooled"), [("tiny", "sd", 32, False), ("tiny-sdxl", "sdxl", 64, True)]
)
def test_tiny_bases_load_and_encode_prompts(kind, family, cross_attention, pooled):
    ref = resolve_base_model(kind)
    assert ref.family == family and ref.revision.startswith("sha256:")
    model = load_base_model(ref)
    text = model.encode_text(["a photo of sks dog", "a red ball"])
    assert text.embeds.shape == (2, 77, cross_attention)
    assert (text.pooled is not None) == pooled
    assert all(not p.requires_grad for p in model.unet.parameters())
    mean, std = model.encode_images(torch.zeros(1, 3, 64, 64))
    assert mean.shape == (1, 4, 32, 32) and std.shape == mean.shape


def test_same_tiny_weights_give_the_same_revision(tmp_path: Path, monkeypatch):
    default = resolve_base_model("tiny")
    monkeypatch.setenv("DREAMLOOM_CACHE", str(tmp_path))
    rebuilt = resolve_base_model("tiny")
    assert rebuilt.location != default.location
    assert rebuilt.revision == default.revision


def test_a_local_diffusers_folder_is_a_base_model(tmp_path: Path):
    copy = tmp_path / "my-base"
    shutil.copytree(ensure_tiny("tiny"), copy)
    ref = resolve_base_model(str(copy))
    assert ref.location == str(copy) and ref.family == "sd"


def test_bad_base_model_specs_explain_what_to_do(tmp_path: Path):
    (tmp_path / "not-a-pipeline").mkdir()
    with pytest.raises(DreamloomError, match=r"model_index\.json"):
        resolve_base_model(str(tmp_path / "not-a-pipeline"))
    with pytest.raises(DreamloomError, match="neither a folder nor a hub id"):
        resolve_base_model("no such model!")
    with pytest.raises(
        DreamloomError, match=re.escape("huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0")
    ):
        resolve_base_model("stabilityai/stable-diffusion-xl-base-1.0")  # offline in tests
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(DreamloomError, match="not supported"):
        resolve_base_model(str(flux))


def test_pickled_weights_are_never_loaded(tmp_path: Path):
    copy = tmp_path / "pickled"
    shutil.copytree(ensure_tiny("tiny"), copy)
    unet_weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(unet_weights)), copy / "unet" / "diffusion_pytorch_model.bin")
    unet_weights.unlink()
    with pytest.raises(DreamloomError, match="safetensors"):
        load_base_model(resolve_base_model(str(copy)))


def test_meta_device_builds_in_threads_leave_torch_unpatched():
    """accelerate patches nn.Module.register_parameter while it builds on the meta device; two
    threads inside at once left it patched for good, and every later model load failed."""
    from concurrent.futures import ThreadPoolExecutor

    from dreamloom.sizing import Architecture

    original = torch.nn.Module.register_parameter
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: Architecture.known("sd15").meta_pipeline(), range(4)))
    assert torch.nn.Module.register_parameter is original
    load_base_model(resolve_base_model("tiny"))  # and real loads still work
