"""Every method's artifact loads where users load it: in plain diffusers, in a process that never
imports dreamloom (tests/plain_diffusers.py), on both families (tiny: SD 1.x/2.x layout; tiny-sdxl:
SDXL layout with two text encoders). The image diffusers renders must be dreamloom's own rendering
of the same artifact, and differ from the base's: the artifact was read, all of it.

``make test-realsize`` runs the same on the real architectures (sd15-random, sdxl-random, trained
at 128 px). On SDXL it trains the adapters and the ControlNet (with Adafactor: 17.3 GiB peak), not
the DreamBooth UNet, whose fp32 weights and optimizer state (26-40 GB) exceed a 24 GB CPU machine.

LoHa, LoKr and A1111 hypernetworks have no diffusers loader; their kohya/A1111 files are covered
in test_lycoris.py and test_methods.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from dreamloom.inference import load_artifact_pipeline
from dreamloom.interop import export_kohya, import_kohya
from dreamloom.models import load_base_model, pipeline_from_components, resolve_base_model
from dreamloom.training.local import train_in_process
from tests.helpers import draw_images, method_config
from tests.plain_diffusers import render

pytestmark = pytest.mark.slow

PROMPTS = {"textual-inversion": "a photo of <sks-ball>", "pivotal": "a photo of <sks-ball>"}
TRAINED = {
    "lora": {"lora__train_text_encoder": True},
    "textual-inversion": {},
    "pivotal": {},
    "controlnet": {},
    "dreambooth": {"prior__enabled": False, "dreambooth__train_text_encoder": True},
}
FAMILIES = {"tiny": "sd", "tiny-sdxl": "sdxl", "sdxl-random": "sdxl", "sd15-random": "sd"}  # the largest first
REAL_SIZE = ("sd15-random", "sdxl-random")
ADAPTERS_ONLY = ("sdxl-random",)  # see the module's docstring
# A whole SDXL ControlNet fits 24 GB with Adafactor (17.3 GiB peak), not with AdamW (25 GB of state).
ON_REAL_SDXL = {"controlnet": {"optimizer__name": "adafactor", "training__gradient_checkpointing": True}}
# Training five methods on a real architecture and rendering every case in plain diffusers takes
# longer than the default timeout on 2 cores.
HEAVY = [pytest.mark.realsize, pytest.mark.xl, pytest.mark.timeout(3600)]


def _methods(base: str) -> list[str]:
    return ["lora", "textual-inversion", "pivotal", "controlnet"] if base in ADAPTERS_ONLY else list(TRAINED)


def _bases(leaving_out: tuple[str, ...] = ()):
    bases = [base for base in FAMILIES if base not in leaving_out]
    return [pytest.param(base, marks=HEAVY) if base in REAL_SIZE else base for base in bases]


def _base_and_method():
    return [
        pytest.param(base, method, marks=HEAVY if base in REAL_SIZE else [], id=f"{base}-{method}")
        for base in FAMILIES
        for method in _methods(base)
    ]


# One training and one plain-diffusers process per base, shared by that base's tests. Kept here, not
# in a module-scoped fixture: pytest sets such a fixture up again for every (base, method) pair.
_LOADED: dict[str, tuple] = {}


@pytest.fixture
def loaded(request, tmp_path_factory):
    """For one base: the artifacts, the cases, and what plain diffusers rendered of each."""
    if request.param not in _LOADED:
        _LOADED[request.param] = _train_and_load(request.param, tmp_path_factory.mktemp(request.param))
    return _LOADED[request.param]


def _train_and_load(base: str, work: Path) -> tuple:
    real = base in REAL_SIZE
    photos = draw_images(work / "photos", count=2, size=(160, 160) if real else (96, 80))
    sizing = {"data__resolution": 128, "training__batch_size": 1} if real else {}
    if base in ADAPTERS_ONLY:
        sizing["training__mixed_precision"] = "bf16"  # frozen SDXL weights in bf16: 7 GB, not 14
    control = work / "edges.png"
    edges = Image.new("RGB", (64, 64))
    ImageDraw.Draw(edges).rectangle((12, 12, 52, 52), outline=(255, 255, 255), width=3)
    edges.save(control)
    artifacts = {
        method: train_in_process(
            method_config(
                method,
                photos,
                work / method,
                base_model=base,
                training__steps=2,
                # 5e-2 makes two steps visible on tiny; on a real-size UNet it sends a whole-UNet
                # fine-tune to NaN images (seen on sd15-random), so DreamBooth takes a real rate there.
                optimizer__learning_rate=1e-4 if real and method == "dreambooth" else 5e-2,
                **sizing,
                **TRAINED[method],
                **(ON_REAL_SDXL.get(method, {}) if base in ADAPTERS_ONLY else {}),
            )
        )
        for method in _methods(base)
    }
    artifacts["kohya"] = export_kohya(artifacts["lora"], work / "ball.safetensors")
    cases = [_case(name, path, base, control) for name, path in artifacts.items()]
    cases.append({**_case("base", None, base, control), "kind": "base"})
    (work / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("plain_diffusers.py")),
            str(work / "cases.json"),
            str(work / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=1800 if real else 600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    images = dict(np.load(work / "out.npz"))
    return base, artifacts, {case["name"]: case for case in cases}, images, json.loads(done.stdout.splitlines()[-1])


def _case(name: str, path: Path | None, base: str, control: Path) -> dict:
    case = {
        "name": name,
        "kind": name,
        "family": FAMILIES[base],
        "base": resolve_base_model(base).location,
        "path": str(path / "controlnet" if name == "controlnet" else path) if path else None,
        "prompt": PROMPTS.get(name, "a photo of sks ball"),
        "token": "<sks-ball>",
    }
    if name in ("textual-inversion", "pivotal"):
        case["embeddings"] = str(path / "learned_embeds.safetensors")
    if name == "controlnet":
        case["control_image"] = str(control)
    return case


def _dreamloom_render(artifact: Path, case: dict) -> np.ndarray:
    pipe, _ = load_artifact_pipeline(artifact)
    return render(pipe, case)


@pytest.mark.parametrize(("loaded", "method"), _base_and_method(), indirect=["loaded"])
def test_plain_diffusers_renders_what_dreamloom_renders(loaded, method):
    base, artifacts, cases, images, _ = loaded
    ours = _dreamloom_render(artifacts[method], cases[method])
    np.testing.assert_allclose(images[method], ours, atol=1e-4, equal_nan=False)
    base_image = images["base"] if method != "controlnet" else _base_with_prompt(base, cases[method])
    assert np.isfinite(images[method]).all()
    assert np.abs(images[method] - base_image).mean() > 1e-3, "the artifact changed nothing"


def _base_with_prompt(base: str, case: dict) -> np.ndarray:
    return render(pipeline_from_components(load_base_model(resolve_base_model(base))), case)


@pytest.mark.parametrize("loaded", _bases(), indirect=True)
def test_a_lora_with_text_encoders_loads_into_every_encoder(loaded):
    base, _, _, _, adapted = loaded
    encoders = ["text_encoder", "text_encoder_2"] if FAMILIES[base] == "sdxl" else ["text_encoder"]
    assert adapted["lora"] == ["unet", *encoders]


@pytest.mark.parametrize("loaded", _bases(leaving_out=ADAPTERS_ONLY), indirect=True)
def test_a_dreambooth_that_trained_its_text_encoders_ships_every_one(loaded):
    base, artifacts, _, _, _ = loaded
    encoders = ["text_encoder", "text_encoder_2"] if FAMILIES[base] == "sdxl" else ["text_encoder"]
    shipped = sorted(path.name for path in artifacts["dreambooth"].iterdir() if path.name.startswith("text_encoder"))
    assert shipped == encoders


@pytest.mark.parametrize("loaded", _bases(), indirect=True)
def test_the_kohya_export_loads_in_diffusers_and_imports_back_identically(loaded, tmp_path):
    base, artifacts, cases, images, adapted = loaded
    prefixes = {key.split("_", 2)[0] + "_" + key.split("_", 2)[1] for key in load_file(str(artifacts["kohya"]))}
    expected = {"lora_unet", "lora_te1", "lora_te2"} if FAMILIES[base] == "sdxl" else {"lora_unet", "lora_te"}
    assert prefixes == expected
    assert adapted["kohya"] == adapted["lora"]
    np.testing.assert_allclose(images["kohya"], images["lora"], atol=1e-4)
    imported = tmp_path / "imported"
    import_kohya(artifacts["kohya"], base, imported)
    np.testing.assert_allclose(_dreamloom_render(imported, cases["lora"]), images["lora"], atol=1e-4)
