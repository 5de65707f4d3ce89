"""LoHa, LoKr and DoRA, in process: they train through the one loop, load as they trained, convert
to and from the files A1111/ComfyUI/kohya read (by their reading of the keys), and share a served
pipeline with LoRAs without leaving anything behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamloom.errors import DreamloomError
from dreamloom.generation import GenerationRequest, generate
from dreamloom.inference import load_artifact_pipeline
from dreamloom.interop import export_kohya, import_kohya
from dreamloom.methods.peft_layers import component_modules, per_sample_adapters
from dreamloom.models import load_base_model, pipeline_from_components, resolve_base_model
from dreamloom.serving.adapters import AdapterCache, sample_adapters
from dreamloom.training.local import train_in_process
from tests.helpers import draw_images, method_config

pytestmark = pytest.mark.slow  # five adapters trained, many renders

PROMPT = "a photo of sks ball on a table"
Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # a module every adapter adapts
KOHYA_Q = "lora_unet_" + Q.replace(".", "_")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return draw_images(tmp_path_factory.mktemp("photos"), count=3)


def _train(method: str, photos: Path, folder: Path, **overrides) -> Path:
    options = {"training__steps": 3, "optimizer__learning_rate": 2e-2, **overrides}
    return train_in_process(method_config(method, photos, folder, **options))


def _render(pipe, prompt: str = PROMPT) -> np.ndarray:
    request = GenerationRequest([prompt], images_per_prompt=2, steps=3, seed=5)
    return np.stack([np.asarray(image, dtype=np.int16) for image in generate(pipe, request, 64)[0]])


def _base_pipe():
    return pipeline_from_components(load_base_model(resolve_base_model("tiny")))


@pytest.fixture(scope="module")
def base_images() -> np.ndarray:
    return _render(_base_pipe())


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("lycoris")
    return {
        "loha": _train("loha", photos, root / "loha", loha__train_text_encoder=True),
        # Low rank on every factor, and an alpha that is not the rank: the scales must survive.
        # (At rank 1 it learns about a third of the full version's update per step: a larger step size.)
        "lokr": _train(
            "lokr",
            photos,
            root / "lokr",
            lokr__rank=1,
            lokr__alpha=3.0,
            lokr__decompose_both=True,
            optimizer__learning_rate=6e-2,
        ),
        "lokr-full": _train("lokr", photos, root / "lokr-full"),  # both Kronecker factors full matrices
        "dora": _train("lora", photos, root / "dora", lora__use_dora=True),
        "lora": _train("lora", photos, root / "lora"),
    }


@pytest.mark.parametrize("name", ["loha", "lokr", "lokr-full", "dora"])
def test_each_trains_and_changes_the_images(trained, base_images, name):
    pipe, _ = load_artifact_pipeline(trained[name])
    assert np.abs(_render(pipe) - base_images).mean() > 0.5
    zero, _ = load_artifact_pipeline(trained[name], strength=0.0)
    if name != "dora":  # DoRA's learned magnitude acts at scale 0 (peft's semantics); served weight 0 skips it
        assert np.array_equal(_render(zero), base_images)


def test_dora_trains_a_magnitude_and_loads_in_plain_diffusers(trained):
    tensors = load_file(str(trained["dora"] / "pytorch_lora_weights.safetensors"))
    assert any(key.endswith("lora_magnitude_vector") for key in tensors)
    plain = _base_pipe()
    plain.load_lora_weights(str(trained["dora"]))  # diffusers' own loader, no dreamloom code
    ours, _ = load_artifact_pipeline(trained["dora"])
    assert np.array_equal(_render(plain), _render(ours))


def test_loha_exports_the_lycoris_layout_and_imports_to_the_same_images(trained, tmp_path):
    exported = export_kohya(trained["loha"], tmp_path / "ball-loha.safetensors")
    tensors = load_file(str(exported))
    assert {f"{KOHYA_Q}.{n}" for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha")} <= set(tensors)
    assert any(key.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for key in tensors)
    assert float(tensors[f"{KOHYA_Q}.alpha"]) == 4.0
    import_kohya(exported, "tiny", tmp_path / "imported")
    original, _ = load_artifact_pipeline(trained["loha"])
    imported, manifest = load_artifact_pipeline(tmp_path / "imported")
    assert manifest.method == "loha" and manifest.imported_from.format == "kohya"
    assert np.array_equal(_render(imported), _render(original))


@pytest.mark.parametrize("name", ["lokr", "lokr-full"])
def test_lokr_exports_the_lycoris_layout_and_imports_to_the_same_images(trained, tmp_path, name):
    exported = export_kohya(trained[name], tmp_path / f"{name}.safetensors")
    tensors = load_file(str(exported))
    factors = ("lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b") if name == "lokr" else ("lokr_w1", "lokr_w2")
    assert {f"{KOHYA_Q}.{n}" for n in (*factors, "alpha")} <= set(tensors)
    import_kohya(exported, "tiny", tmp_path / "imported")
    original, _ = load_artifact_pipeline(trained[name])
    imported, _ = load_artifact_pipeline(tmp_path / "imported")
    difference = np.abs(_render(imported) - _render(original)).max()
    assert difference <= (0 if name == "lokr-full" else 1)  # folding a non-unit scale into w1 rounds in fp32


def _delta_of_q(artifact: Path) -> torch.Tensor:
    """The weight change an imported artifact makes to the module Q, as peft computes it."""
    pipe, _ = load_artifact_pipeline(artifact)
    layer = dict(pipe.unet.named_modules())[Q]
    return layer.get_delta_weight("dreamloom")


def test_foreign_files_mean_what_a1111_and_comfyui_read_in_them(tmp_path):
    """Files written by hand in the LyCORIS layout, read back with A1111/ComfyUI's scaling: LoHa
    by alpha / rank, LoKr by alpha / rank only when a factor is low-rank, else by 1."""
    torch.manual_seed(0)
    w = {
        n: torch.randn(shape)
        for n, shape in {"a": (64, 2), "b": (2, 64), "c": (64, 2), "d": (2, 64), "k1": (8, 8), "k2": (8, 8)}.items()
    }
    loha = {
        f"{KOHYA_Q}.hada_w1_a": w["a"],
        f"{KOHYA_Q}.hada_w1_b": w["b"],
        f"{KOHYA_Q}.hada_w2_a": w["c"],
        f"{KOHYA_Q}.hada_w2_b": w["d"],
        f"{KOHYA_Q}.alpha": torch.tensor(1.0),
    }
    save_file(loha, str(tmp_path / "loha.safetensors"))
    import_kohya(tmp_path / "loha.safetensors", "tiny", tmp_path / "loha")
    expected = (w["a"] @ w["b"]) * (w["c"] @ w["d"]) * (1.0 / 2)
    assert torch.allclose(_delta_of_q(tmp_path / "loha"), expected, atol=1e-6)

    lokr = {f"{KOHYA_Q}.lokr_w1": w["k1"], f"{KOHYA_Q}.lokr_w2": w["k2"], f"{KOHYA_Q}.alpha": torch.tensor(1.0)}
    save_file(lokr, str(tmp_path / "lokr.safetensors"))
    import_kohya(tmp_path / "lokr.safetensors", "tiny", tmp_path / "lokr")
    assert torch.allclose(_delta_of_q(tmp_path / "lokr"), torch.kron(w["k1"], w["k2"]), atol=1e-6)  # alpha ignored


def test_files_that_fit_no_method_or_base_are_refused_by_name(tmp_path):
    odd = {f"{KOHYA_Q}.hada_w1_a": torch.zeros(64, 2), "lora_unet_no_such_block.hada_w1_a": torch.zeros(2, 2)}
    for name in ("hada_w1_b", "hada_w2_a", "hada_w2_b"):
        odd[f"{KOHYA_Q}.{name}"] = torch.zeros(2, 64) if name.endswith("_b") else torch.zeros(64, 2)
    save_file(odd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(DreamloomError, match="lora_unet_no_such_block names no module of tiny"):
        import_kohya(tmp_path / "odd.safetensors", "tiny", tmp_path / "odd")
    mixed = {f"{KOHYA_Q}.hada_w1_a": torch.zeros(64, 2), f"{KOHYA_Q}.lokr_w1": torch.zeros(8, 8)}
    save_file(mixed, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(DreamloomError, match="which kind of adapter"):
        import_kohya(tmp_path / "mixed.safetensors", "tiny", tmp_path / "mixed")
    assert not (tmp_path / "odd").exists() and not (tmp_path / "mixed").exists()


def test_a_served_pipeline_mixes_them_and_evicting_leaves_no_empty_layers(trained, base_images):
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe = _base_pipe()
    cache = AdapterCache(pipe, budget_bytes=2**30)
    loaded = {name: cache.get(f"{name}/1", trained[name]) for name in ("lora", "lokr", "loha", "dora")}

    def render(*weighted) -> np.ndarray:  # as the serving engine renders one request
        pairs = [(loaded[name], weight) for name, weight in weighted]
        with per_sample_adapters(pipe, [sample_adapters(pairs)]):
            return _render(pipe)

    lora, lokr = render(("lora", 1.0)), render(("lokr", 1.0))
    both = render(("lora", 1.0), ("lokr", 1.0))
    assert np.abs(both - lora).mean() > 0.3 and np.abs(both - lokr).mean() > 0.3
    assert np.array_equal(render(("lora", 1.0), ("lokr", 0.0)), lora)  # weight 0 switches one off
    assert np.array_equal(render(("dora", 0.0)), base_images)
    alone, _ = load_artifact_pipeline(trained["lokr"])
    assert np.array_equal(lokr, _render(alone))  # the same images as the artifact loaded on its own
    for name in ("lokr", "lora", "dora", "loha"):  # evict in another order than loaded
        cache.evict(f"{name}/1")
    assert np.array_equal(render(), base_images)
    modules = [module for root in component_modules(pipe).values() for module in root.modules()]
    assert not [module for module in modules if isinstance(module, BaseTunerLayer)]
