import json

import pytest
from safetensors.torch import load_file

from dreamloom.advisor import Needs, recommend
from dreamloom.cli import main
from dreamloom.config import load_run_config
from dreamloom.sizing import Architecture, estimate
from dreamloom.training.local import train_in_process
from tests.helpers import draw_images, method_config

# Parameter counts of the published models (diffusers/transformers classes on their configs).
PUBLISHED = {
    "sd15": (859_520_964, [123_060_480], 83_653_863),
    "sd21": (865_910_724, [340_387_840], 83_653_863),
    "sdxl": (2_567_463_684, [123_060_480, 694_659_840], 83_653_863),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_architectures_have_the_published_parameter_counts(name):
    arch = Architecture.for_base(name)
    assert (arch.unet_params, arch.text_encoder_params, arch.vae_params) == PUBLISHED[name]


def _config(method: str, **extra):
    document = {"method": method, "data.path": ".", "data.instance_prompt": "a <concept>", "output": "."}
    return load_run_config(None, {**document, "prior.enabled": False, **extra})


def test_estimates_follow_from_parameter_counts():
    sd15 = Architecture.for_base("stable-diffusion-v1-5/stable-diffusion-v1-5")
    dreambooth = estimate(sd15, _config("dreambooth"))
    assert dreambooth.trainable_params == 859_520_964 and dreambooth.artifact_bytes == 4 * 859_520_964
    frozen = sd15.total_params - 859_520_964
    assert dreambooth.training_state_bytes == 2 * frozen + 16 * 859_520_964
    adafactor = estimate(sd15, _config("dreambooth", **{"optimizer.name": "adafactor"}))
    assert adafactor.training_state_bytes == 2 * frozen + int(10.13 * 859_520_964)  # factored second moments
    with_text = estimate(sd15, _config("dreambooth", **{"dreambooth.train_text_encoder": True}))
    assert with_text.trainable_params == 859_520_964 + 123_060_480  # CLIP ViT-L/14's text tower
    unet = sd15.unet()  # LoRA rank r on every to_q/to_k/to_v/to_out.0 adds r x (in + out) weights
    targets = [m for name, m in unet.named_modules() if name.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    assert estimate(sd15, _config("lora", **{"lora.rank": 8})).trainable_params == sum(
        8 * (m.in_features + m.out_features) for m in targets
    )
    assert (
        estimate(sd15, _config("textual-inversion", **{"textual_inversion.num_vectors": 4})).trainable_params == 4 * 768
    )
    assert estimate(sd15, _config("controlnet")).trainable_params == 361_279_120  # SD 1.5 ControlNets are ~361M
    sdxl = Architecture.for_base("sdxl")
    assert estimate(sdxl, _config("textual-inversion")).trainable_params == 768 + 1280


@pytest.mark.parametrize("method", ["lora", "textual-inversion", "hypernetwork"])
def test_estimated_artifact_size_matches_a_trained_artifact(method, tmp_path):
    photos = draw_images(tmp_path / "photos", count=2)
    config = method_config(method, photos, tmp_path / method, training__steps=1)
    artifact = train_in_process(config)
    (weights,) = list(artifact.glob("*.safetensors"))
    stored = sum(tensor.numel() for tensor in load_file(str(weights)).values())
    predicted = estimate(Architecture.for_base("tiny"), config)
    assert stored == predicted.trainable_params
    assert predicted.artifact_bytes <= weights.stat().st_size <= predicted.artifact_bytes + 64 * 1024  # header


@pytest.mark.parametrize(
    ("needs", "expected"),
    [
        (Needs(concepts=12, fine_detail=True), "lora"),  # many concepts
        (Needs(concepts=1, fine_detail=True, new_to_base=True), "dreambooth"),  # one concept needing detail
        (Needs(style=True), "hypernetwork"),  # a style
        (Needs(spatial_control=True), "controlnet"),  # a layout
        (Needs(concepts=1), "textual-inversion"),  # the base almost knows it
        (Needs(concepts=4, fine_detail=True, new_to_base=True), "pivotal"),
    ],
)
def test_textbook_cases(needs, expected):
    advice = recommend(needs, Architecture.for_base("sd15"))
    assert advice.method == expected
    assert advice.reasons


def test_budgets_move_the_choice_down_with_the_reason():
    sdxl = Architecture.for_base("sdxl")
    advice = recommend(Needs(fine_detail=True, new_to_base=True, gpu_memory_gb=24), sdxl)
    assert advice.method == "dreambooth-lora"
    assert "over the 24 GB GPU" in advice.reasons[0]
    tight = recommend(Needs(concepts=5, fine_detail=True, storage_mb_per_concept=1), Architecture.for_base("sd15"))
    assert tight.method == "textual-inversion" and "over the 1 MB budget" in tight.reasons[0]


def test_advise_command_prints_json(capsys):
    code = main(["advise", "--base-model", "sdxl", "--concepts", "1", "--style", "--no-fine-detail", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["method"] == "hypernetwork"
    assert report["estimates"]["dreambooth"]["trainable_params"] == 2_567_463_684
