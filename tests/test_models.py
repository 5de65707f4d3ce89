import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamloom.errors import DreamloomError
from dreamloom.models import load_base_model, pipeline_from_components, resolve_base_model
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


# ----- the real architectures with random weights -----


def _shrunk(architecture: str) -> dict:
    """The architecture's configs with every width cut to a few channels: the same module types,
    block layout, scheduler and tokenizers, built in a second."""
    import copy

    from dreamloom.models.architectures import KNOWN

    entry = copy.deepcopy(KNOWN[architecture])
    unet, blocks = entry["unet"], len(entry["unet"]["block_out_channels"])
    unet |= {"block_out_channels": [32] + [64] * (blocks - 1), "layers_per_block": 1, "sample_size": 16}
    unet["attention_head_dim"] = [2] * blocks if isinstance(unet["attention_head_dim"], list) else 2
    if "transformer_layers_per_block" in unet:
        unet["transformer_layers_per_block"] = [1] * blocks
    for text in entry["text_encoders"]:
        text |= {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
        text["projection_dim"] = 32
    unet["cross_attention_dim"] = 32 * len(entry["text_encoders"])
    if "addition_time_embed_dim" in unet:
        unet |= {"addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 32}
    entry["vae"] |= {"block_out_channels": [32] * len(entry["vae"]["block_out_channels"]), "sample_size": 128}
    return entry


@pytest.mark.parametrize(("architecture", "family", "prediction"), [
    ("sd15", "sd", "epsilon"), ("sd21", "sd", "v_prediction"), ("sdxl", "sdxl", "epsilon"),
])  # fmt: skip
def test_random_bases_are_seeded_labelled_and_load_as_their_family(tmp_path, architecture, family, prediction):
    from dreamloom.models.random_init import is_random_weights, save_random_base

    folders = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        folders[name] = tmp_path / name
        save_random_base(folders[name], architecture, seed, entry=_shrunk(architecture))
    first, again, other = (load_file(folders[n] / "unet" / "diffusion_pytorch_model.safetensors") for n in "abc")
    assert all(torch.equal(first[key], again[key]) for key in first)  # same seed, same weights
    assert any(not torch.equal(first[key], other[key]) for key in first)
    assert {tensor.dtype for tensor in first.values()} == {torch.bfloat16}  # stored at half the size

    ref = resolve_base_model(str(folders["a"]))
    assert (ref.family, ref.random_weights, ref.weights) == (family, True, "random")
    assert is_random_weights(folders["a"]) and not is_random_weights(ensure_tiny("tiny"))
    model = load_base_model(ref)
    assert model.unet.dtype == torch.float32  # cast to the run's dtype on load
    assert model.noise_scheduler.config.prediction_type == prediction  # sd21 trains on v
    assert pipeline_from_components(model).scheduler.config.prediction_type == prediction  # and samples on v
    text = model.encode_text(["a photo of sks dog"])
    assert text.embeds.shape[-1] == model.unet.config.cross_attention_dim
    assert (text.pooled is not None) == (family == "sdxl")
    pads = [tokenizer.pad_token for tokenizer in model.tokenizers]
    assert pads == {"sd15": ["<|endoftext|>"], "sd21": ["!"], "sdxl": ["<|endoftext|>", "!"]}[architecture]


def test_a_random_base_is_recorded_as_random_in_the_manifest_and_its_lineage(tmp_path):
    from dreamloom.models.base import BaseModelRef
    from dreamloom.tracking import Lineage, Tag

    random_ref = BaseModelRef("sd15-random", str(tmp_path), "sha256:0", "sd", random_weights=True)
    assert BaseModelRef.from_dict(random_ref.to_dict()) == random_ref
    older = {"spec": "tiny", "location": str(tmp_path), "revision": "sha256:1", "family": "sd"}
    assert BaseModelRef.from_dict(older).weights == "pretrained"  # manifests written before the field
    lineage = Lineage(
        method="lora", artifact_kind="lora", base_model="sd15-random", base_model_revision="sha256:0",
        dataset_hash="sha256:2", base_model_weights=random_ref.weights,
    )  # fmt: skip
    assert lineage.tags()[Tag.BASE_MODEL_WEIGHTS] == "random"
    assert Lineage.from_tags(lineage.tags()) == lineage


def test_unknown_random_bases_are_refused_by_name():
    from dreamloom.models.random_init import ensure_random_base

    with pytest.raises(ValueError, match="choose one of sd15-random, sd21-random, sdxl-random"):
        ensure_random_base("sd3-random")


@pytest.mark.realsize
def test_sd15_random_has_the_published_parameter_count_and_loads_in_plain_diffusers():
    """The real SD 1.5 shapes: built from the shipped configs (about 2.1 GB in bf16), loaded by
    diffusers itself, with exactly the parameters sizing counts on the meta device."""
    from diffusers import StableDiffusionPipeline

    from dreamloom.sizing import Architecture

    ref = resolve_base_model("sd15-random")
    assert ref.random_weights and ref.family == "sd"
    pipe = StableDiffusionPipeline.from_pretrained(ref.location, use_safetensors=True, torch_dtype=torch.bfloat16)
    counted = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    assert counted == Architecture.known("sd15").total_params
    assert list(pipe.unet.config.block_out_channels) == [320, 640, 1280, 1280]


# ----- precision by hardware -----

X86_FLAGS = "flags\t\t: fpu vme de pse tsc msr avx2 avx512f avx512bw"


@pytest.mark.parametrize(("cpuinfo", "native"), [
    (X86_FLAGS, False),
    (X86_FLAGS + " avx512_bf16", True),
    (X86_FLAGS + " amx_bf16 amx_tile", True),
    ("Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics", False),
    ("Features\t: fp asimd sve bf16 i8mm", True),
    ("model name\t: bf16 avx512_bf16 in a name is not a flag", False),
])  # fmt: skip
def test_native_bf16_is_read_from_the_cpus_own_flags(cpuinfo, native):
    from dreamloom.models.precision import bf16_in_cpuinfo

    assert bf16_in_cpuinfo(cpuinfo) is native


@pytest.mark.parametrize(("native", "setting", "autocast", "frozen"), [
    ("1", "auto", torch.bfloat16, torch.bfloat16),  # AMX / AVX512-BF16: bf16 weights, bf16 compute
    ("0", "auto", None, torch.float32),  # emulated bf16 is slower than fp32
    ("0", "bf16", torch.bfloat16, torch.bfloat16),  # asked for: frozen weights in bf16, as diffusers' scripts keep them
    ("1", "no", None, torch.float32),
])  # fmt: skip
def test_auto_precision_on_cpu_follows_the_hardware(monkeypatch, native, setting, autocast, frozen):
    from dreamloom.training.precision import resolve_precision

    monkeypatch.setenv("DREAMLOOM_CPU_BF16", native)
    precision = resolve_precision(setting, torch.device("cpu"))
    assert (precision.autocast_dtype, precision.frozen_dtype) == (autocast, frozen)
    assert not precision.needs_grad_scaler


def test_generation_loads_bases_in_bf16_only_where_the_cpu_computes_it(monkeypatch):
    from dreamloom.models.precision import inference_dtype

    monkeypatch.setenv("DREAMLOOM_CPU_BF16", "1")
    assert inference_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("DREAMLOOM_CPU_BF16", "0")
    assert inference_dtype("cpu") == torch.float32
