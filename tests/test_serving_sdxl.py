"""SDXL through the real tritonserver: the same request protocol and client as SD, every mode,
per-request adapters with weights, and a DreamBooth SDXL as its own Triton model.

Adapters are trained for a few steps on ``tiny-sdxl`` (two text encoders, pooled embeddings, size
and crop conditioning: SDXL's whole interface at a size a CPU trains in seconds), registered in
MLflow and deployed as `dreamloom deploy` does it.
"""

from __future__ import annotations

import numpy as np
import pytest

from dreamloom.serving.client import ServingClient
from dreamloom.serving.deploy import deploy
from dreamloom.serving.protocol import ImageRequest, encode_image
from dreamloom.serving.repository import ServingStore
from dreamloom.serving.server import TritonServer, free_port
from dreamloom.toy import world
from dreamloom.toy.concepts import INSTANCE_PROMPT, write_concept
from tests.helpers import mode_cases, pixel_difference, register_champion, train_toy

pytestmark = pytest.mark.slow
MODEL = "dreamloom-xl"
FAST = {"steps": 3, "guidance": 5.0}
SCENE = encode_image(world.render(world.Scene("square", "red", "plain", "white"), 0))


def _on_sdxl(method: str, data, output, **overrides):
    return train_toy(method, data, output, base_model="tiny-sdxl", **overrides)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-artifacts")
    data = write_concept("hexagon", root / "hexagon")
    placeholder = write_concept("hexagon", root / "hexagon-ti", subject="<hex-shape>")
    return {
        "lora": _on_sdxl("lora", data, root / "lora", **{"training.steps": 10, "lora.train_text_encoder": True}),
        "textual-inversion": _on_sdxl(
            "textual-inversion",
            placeholder,
            root / "ti",
            **{
                "data.instance_prompt": "a <hex-shape> on a white background",
                "textual_inversion.placeholder_token": "<hex-shape>",
                "textual_inversion.initializer_token": "circle",
                "optimizer.learning_rate": 0.5,
            },
        ),
        "controlnet": _on_sdxl("controlnet", data, root / "cn", **{"controlnet.condition": "canny"}),
        "dreambooth": _on_sdxl("dreambooth", data, root / "db", **{"prior.enabled": False}),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory, artifacts):
    store = ServingStore(tmp_path_factory.mktemp("sdxl-serving") / "store")
    store.ensure_model(MODEL, "tiny-sdxl", max_batch_size=2, adapter_budget_mib=64)
    server = TritonServer.for_store(store, [MODEL], free_port(), free_port(), free_port())
    server.start(timeout_s=300)
    client = ServingClient(server.http_url, model=MODEL)
    try:
        for name in ("lora", "textual-inversion", "controlnet"):
            register_champion(artifacts[name], f"xl-{name}")
            deploy(f"xl-{name}@champion", server.http_url, store=store, model=MODEL)
        yield server, store, client
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("mode, size, images", mode_cases(SCENE))
def test_every_mode_serves_sdxl_at_the_requested_size(served, mode, size, images):
    _, _, client = served
    adapter = "xl-controlnet@champion" if mode == "controlnet" else "xl-lora@champion"
    request = ImageRequest(INSTANCE_PROMPT, mode=mode, width=size[0], height=size[1], adapter=adapter, **images, **FAST)
    image = client.generate(request)
    assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8
    assert image.std() > 1  # a picture, not a blank


def test_sdxl_adapters_act_per_request_with_their_own_weights(served):
    """A LoRA (UNet and both text encoders) and a textual inversion (clip_l and clip_g) mixed in
    one request; weight 0 is the base, and nothing stays switched on afterwards."""
    _, _, client = served
    prompt = "a <hex-shape> on a white background"

    def ask(adapter: str = "", **extra) -> np.ndarray:
        return client.generate(ImageRequest(prompt, seed=4, adapter=adapter, **FAST, **extra))

    base = ask()
    lora, embedding = ask("xl-lora"), ask("xl-textual-inversion")
    both = ask("xl-lora, xl-textual-inversion")
    assert pixel_difference(lora, base) > 1.0 and pixel_difference(embedding, base) > 1.0
    # One request alone is bit-exact from call to call, so any difference is the other adapter's.
    assert pixel_difference(both, lora) > 0.25 and pixel_difference(both, embedding) > 0.25
    assert np.array_equal(ask("xl-lora*0"), base)  # a weight of 0 switches it off
    assert 0.25 < pixel_difference(ask("xl-lora*0.3"), lora) < pixel_difference(base, lora)
    assert np.array_equal(ask(), base)  # and nothing stays switched on


def test_a_dreambooth_sdxl_is_deployed_as_its_own_triton_model(served, artifacts):
    server, store, client = served
    register_champion(artifacts["dreambooth"], "xl-db")
    result = deploy("xl-db@champion", server.http_url, store=store, model=MODEL)
    assert result.triton_model == "xl-db" and result.adapter == ""
    own = client.generate(ImageRequest(INSTANCE_PROMPT, seed=4, **FAST), model="xl-db")
    base = client.generate(ImageRequest(INSTANCE_PROMPT, seed=4, **FAST))
    assert own.shape == base.shape and pixel_difference(own, base) > 1.0
