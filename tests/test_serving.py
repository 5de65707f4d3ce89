"""Serving through a real tritonserver (from the nvidia-pytriton wheel), started by this module.

Adapters are trained for a few steps on the toy base, registered in MLflow (a SQLite file), promoted
and deployed exactly as `dreamloom deploy` does it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamloom.cli import main
from dreamloom.errors import EXIT_INPUT, EXIT_REFUSED, EXIT_UNREACHABLE, DreamloomError
from dreamloom.serving.client import ServingClient, ServingError
from dreamloom.serving.deploy import deploy
from dreamloom.serving.engine import Engine, EngineConfig
from dreamloom.serving.protocol import ImageRequest, RequestError, encode_image
from dreamloom.serving.repository import ServingStore
from dreamloom.serving.server import TritonServer, free_port
from dreamloom.toy import world
from dreamloom.toy.concepts import INSTANCE_PROMPT, write_concept
from dreamloom.training.local import train_in_process
from tests.helpers import mode_cases, pixel_difference, register_champion, square_mask_png, train_toy

pytestmark = pytest.mark.slow
FAST = {"steps": 4, "guidance": 5.0}
SCENE = world.render(world.Scene("square", "red", "plain", "white"), 0)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-artifacts")
    data = write_concept("hexagon", root / "hexagon")
    placeholder = write_concept("hexagon", root / "hexagon-ti", subject="<hex-shape>")
    return {
        "lora": train_toy("lora", data, root / "lora", **{"training.steps": 20}),
        "lora_v2": train_toy("lora", data, root / "lora2", **{"training.steps": 20, "training.seed": 7}),
        "hypernetwork": train_toy("hypernetwork", data, root / "hn"),
        "textual-inversion": train_toy(
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
        "controlnet": train_toy("controlnet", data, root / "cn", **{"controlnet.condition": "canny"}),
        "dreambooth": train_toy(
            "dreambooth", data, root / "db", **{"prior.enabled": False, "dreambooth.train_text_encoder": True}
        ),
        "lokr": train_toy("lokr", data, root / "lokr", **{"training.steps": 20, "lokr.rank": 8}),
        "loha": train_toy("loha", data, root / "loha", **{"training.steps": 20}),
        "dora": train_toy("lora", data, root / "dora", **{"training.steps": 20, "lora.use_dora": True}),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory, artifacts):
    """A running Triton with every adapter kind deployed as NAME@champion."""
    store = ServingStore(tmp_path_factory.mktemp("serving") / "store")
    store.ensure_model("dreamloom", "toy", max_batch_size=4, adapter_budget_mib=64)
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    server.start(timeout_s=300)
    client = ServingClient(server.http_url)
    try:
        for name in ("lora", "hypernetwork", "textual-inversion", "controlnet", "lokr", "loha"):
            register_champion(artifacts[name], f"hex-{name}")
            deploy(f"hex-{name}@champion", server.http_url, store=store)
        yield server, store, client
    finally:
        client.close()  # an open keep-alive connection holds Triton's shutdown for its exit timeout
        server.stop()


def _png(image: Image.Image) -> bytes:
    return encode_image(image)


# ----- modes -----


@pytest.mark.parametrize("mode, size, images", mode_cases(_png(SCENE)))
def test_every_mode_returns_an_image_of_the_requested_size(served, mode, size, images):
    _, _, client = served
    adapter = "hex-controlnet@champion" if mode == "controlnet" else "hex-lora@champion"
    request = ImageRequest(
        "a red square on a white background",
        mode=mode,
        width=size[0],
        height=size[1],
        adapter=adapter,
        **images,
        **FAST,
    )
    image = client.generate(request)
    assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8
    assert image.std() > 1  # a picture, not a blank


def test_grpc_gives_the_same_image_as_http(served):
    server, _, client = served
    request = ImageRequest("a blue circle on a gray background", seed=11, **FAST)
    grpc = ServingClient(server.grpc_url, "grpc")
    over_grpc = grpc.generate(request)
    grpc.close()
    assert np.array_equal(over_grpc, client.generate(request))


# ----- the trust boundary -----


def _raw(server, path: str, body: dict | None = None, headers: dict | None = None) -> int:
    """An HTTP call as any client of the inference port could make it; returns the status."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_an_inference_client_cannot_load_unload_or_configure_models(served, tmp_path):
    import base64

    server, store, client = served
    plain = ServingClient(server.http_url)  # what a client of the inference port holds
    for attempt in (plain.unload_model, plain.load_model, plain.model_versions, plain.statistics):
        with pytest.raises(ServingError, match="needs the admin key"):
            attempt()
    over_grpc = ServingClient(server.grpc_url, "grpc")
    with pytest.raises(ServingError, match="needs the admin key"):
        over_grpc.unload_model()
    over_grpc.close()
    # A load with a file override would run the file's code inside Triton: refused before it is read.
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')\n"
    override = {"parameters": {"config": "{}", "file:1/model.py": base64.b64encode(code.encode()).decode()}}
    assert _raw(server, "/v2/repository/models/dreamloom/load", override) == 403
    assert _raw(server, "/v2/repository/models/dreamloom/unload", {}) == 403
    assert _raw(server, "/v2/repository/index", {}, {"dreamloom-admin-key": "a-guess-" * 4}) == 403
    assert _raw(server, "/v2/models/dreamloom/config") == 403
    assert not marker.exists()
    # Inference, health and metadata stay open; the model answered throughout.
    assert _raw(server, "/v2/models/dreamloom/ready") == 200 and _raw(server, "/v2/models/dreamloom") == 200
    assert client.generate(ImageRequest("a red square on a white background", **FAST)).shape == (64, 64, 3)
    admin = ServingClient(server.http_url, admin_key=store.admin_key())
    assert admin.model_versions() and admin.statistics()["model_stats"]
    admin.close()


def _metric(server, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter on Triton's metrics endpoint over series with ``labels``."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_refusals_are_invalid_argument_and_counted_and_server_faults_are_500s_without_paths(served, artifacts):
    server, store, client = served
    refused_before = _metric(server, "dreamloom_requests_refused_total", model="dreamloom")
    empty_prompt = {"inputs": [{"name": "PROMPT", "shape": [1, 1], "datatype": "BYTES", "data": [" "]}]}
    assert _raw(server, "/v2/models/dreamloom/infer", empty_prompt) == 400  # what any HTTP client sees
    unknown = ImageRequest("a shape", adapter="nobody", **FAST)
    for protocol, url, status in (
        ("http", server.http_url, "400"),
        ("grpc", server.grpc_url, "StatusCode.INVALID_ARGUMENT"),
    ):
        caller = ServingClient(url, protocol)
        with pytest.raises(ServingError, match="unknown adapter 'nobody'") as refused:
            caller.generate(unknown)
        caller.close()
        assert refused.value.status == status and refused.value.refused
    assert _metric(server, "dreamloom_requests_refused_total", model="dreamloom") == refused_before + 3

    # A server fault: a deployed adapter's weights vanish from the store while it is not in memory.
    register_champion(artifacts["lora"], "hex-fault")
    deploy("hex-fault@champion", server.http_url, store=store)
    register_champion(artifacts["lora_v2"], "hex-fault-2")
    deploy("hex-fault-2@champion", server.http_url, store=store)  # a new version: hex-fault is not loaded in it
    (store.adapters / "hex-fault" / "1" / "pytorch_lora_weights.safetensors").unlink()
    failures_before = _metric(server, "nv_inference_request_failure", model="dreamloom")
    with pytest.raises(ServingError) as fault:
        client.generate(ImageRequest(INSTANCE_PROMPT, adapter="hex-fault@champion", **FAST))
    assert "internal error" in str(fault.value) and str(store.root) not in str(fault.value)
    assert fault.value.status == "500" and not fault.value.refused
    assert _metric(server, "nv_inference_request_failure", model="dreamloom") == failures_before + 1
    assert client.ready() and client.generate(ImageRequest(INSTANCE_PROMPT, adapter="hex-lora", **FAST)).std() > 1


def test_a_request_over_the_deployments_budget_is_refused_before_it_runs(served):
    server, _, client = served
    refused_before = _metric(server, "dreamloom_requests_refused_total", reason="over_budget")
    started = time.monotonic()
    with pytest.raises(
        ServingError, match=r"costs 629\.1 megapixel-steps \(2048x2048 x 150 steps\); this deployment allows 4 per"
    ) as refused:
        client.generate(ImageRequest(INSTANCE_PROMPT, width=2048, height=2048, steps=150))
    assert refused.value.refused and time.monotonic() - started < 10  # refused, not rendered
    assert _metric(server, "dreamloom_requests_refused_total", reason="over_budget") == refused_before + 1


def test_a_request_waiting_longer_than_the_queue_timeout_fails_fast(tmp_path):
    """One model instance, busy with a long request: the one behind it is rejected after the
    queue timeout (UNAVAILABLE, HTTP 503: worth retrying), not after the long one finishes."""
    store = ServingStore(tmp_path / "store")
    store.ensure_model("dreamloom", "toy", max_batch_size=1, queue_timeout_s=1.0, max_request_cost=100.0)
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    server.start(timeout_s=300)
    results: dict[str, object] = {}

    def ask(key: str, request: ImageRequest) -> None:
        caller = ServingClient(server.http_url)
        started = time.monotonic()
        try:
            caller.generate(request)
            results[key] = ("ok", time.monotonic() - started)
        except ServingError as exc:
            results[key] = (exc, time.monotonic() - started)
        caller.close()

    try:
        long = threading.Thread(target=ask, args=("long", ImageRequest(INSTANCE_PROMPT, steps=150)))
        long.start()
        time.sleep(1.0)  # the long request holds the instance
        ask("behind", ImageRequest(INSTANCE_PROMPT, seed=1, steps=2))
        long.join()
    finally:
        server.stop()
    error, waited = results["behind"]
    assert isinstance(error, ServingError) and "timeout" in str(error).lower() and error.status == "503"
    assert not error.refused and waited < results["long"][1]
    assert results["long"][0] == "ok"


def test_readiness_follows_the_served_model_not_only_the_process(served):
    """What the chart's probes and `dreamloom serve` wait on is the served model's readiness, so
    an unloaded model is seen at once (Triton's /v2/health/ready depends on its readiness mode)."""
    server, store, _ = served
    admin = ServingClient(server.http_url, admin_key=store.admin_key())
    try:
        admin.unload_model()
        deadline = time.monotonic() + 60
        while server.ready() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not server.ready() and _raw(server, "/v2/models/dreamloom/ready") != 200
    finally:
        admin.load_model()
        server.wait_ready(timeout_s=300)
        admin.close()
    assert server.ready()


# ----- adapters -----


@pytest.mark.parametrize("name", ["lora", "hypernetwork", "textual-inversion", "lokr", "loha"])
def test_an_adapter_changes_the_output_and_switching_back_restores_it(served, name):
    _, _, client = served
    prompt = "a <hex-shape> on a gray background" if name == "textual-inversion" else INSTANCE_PROMPT
    plain = ImageRequest(prompt, seed=5, **FAST)
    before = client.generate(plain)
    adapted = client.generate(ImageRequest(prompt, seed=5, adapter=f"hex-{name}@champion", **FAST))
    after = client.generate(plain)
    assert pixel_difference(adapted, before) > 2.0
    assert np.array_equal(before, after)


def test_adapter_scale_zero_is_the_base(served):
    _, _, client = served
    base = client.generate(ImageRequest(INSTANCE_PROMPT, seed=9, **FAST))
    scaled = client.generate(ImageRequest(INSTANCE_PROMPT, seed=9, adapter="hex-lora", adapter_scale=0.0, **FAST))
    assert pixel_difference(base, scaled) < 0.5


def test_adapters_act_together_with_their_own_weights(served):
    """A concept LoRA, a style hypernetwork and a ControlNet in one request (the ad use case)."""
    _, _, client = served

    def ask(adapter: str, **extra) -> np.ndarray:
        return client.generate(ImageRequest(INSTANCE_PROMPT, seed=4, adapter=adapter, **FAST, **extra))

    lora, hypernetwork = ask("hex-lora"), ask("hex-hypernetwork")
    both = ask("hex-lora, hex-hypernetwork")
    assert pixel_difference(both, lora) > 1.0 and pixel_difference(both, hypernetwork) > 1.0
    assert np.array_equal(ask("hex-lora, hex-hypernetwork*0"), lora)  # a weight of 0 switches one off
    assert pixel_difference(ask("hex-lora*0.3, hex-hypernetwork"), both) > 0.5
    control = {"mode": "controlnet", "control_image": _png(SCENE)}
    guided = ask("hex-lora, hex-controlnet", **control)
    assert pixel_difference(guided, ask("hex-controlnet", **control)) > 1.0
    assert np.array_equal(ask("hex-lora", adapter_scale=1.0), lora)  # and nothing stays switched on


def test_a_lokr_and_a_lora_mix_in_one_request_each_with_its_weight(served):
    """Registered, promoted and deployed like any adapter; served per request beside a LoRA."""
    _, _, client = served

    def ask(adapter: str) -> np.ndarray:
        return client.generate(ImageRequest(INSTANCE_PROMPT, seed=6, adapter=adapter, **FAST))

    lora, lokr, both = ask("hex-lora"), ask("hex-lokr@champion"), ask("hex-lora, hex-lokr@champion")
    assert pixel_difference(lokr, lora) > 1.0
    assert pixel_difference(both, lora) > 1.0 and pixel_difference(both, lokr) > 1.0
    assert np.array_equal(ask("hex-lora, hex-lokr*0"), lora)  # a weight of 0 switches the LoKr off
    assert pixel_difference(ask("hex-lora, hex-lokr*0.4"), both) > 0.3
    assert np.array_equal(ask("hex-lokr"), lokr)  # and the LoRA left nothing behind


def test_every_sampler_renders_through_triton_and_a_batch_runs_each_request_as_alone(served):
    """A request names its sampler (A1111's labels work); each gives its own picture; requests with
    different samplers, sent together, are batched per sampler and each image is the one the
    request gets alone (the ancestral and SDE samplers draw their noise from the request's seed)."""
    from dreamloom.samplers import SAMPLERS

    _, store, client = served
    alone = {
        name: client.generate(ImageRequest(INSTANCE_PROMPT, seed=2, sampler=name, solo=True, **FAST))
        for name in SAMPLERS
    }
    for name, image in alone.items():
        assert image.ndim == 3 and image.std() > 1.0, name
    assert np.array_equal(client.generate(ImageRequest(INSTANCE_PROMPT, seed=2, solo=True, **FAST)), alone["dpmpp_2m"])
    same_as_label = client.generate(ImageRequest(INSTANCE_PROMPT, seed=2, sampler="DPM++ 2M Karras", solo=True, **FAST))
    assert np.array_equal(same_as_label, alone["dpmpp_2m_karras"])
    assert pixel_difference(alone["euler"], alone["ddim"]) > 1.0
    assert pixel_difference(alone["euler"], alone["euler_a"]) > 1.0

    engine = Engine(EngineConfig("toy", store.latest_routes("dreamloom")))
    mixed = [
        ImageRequest(INSTANCE_PROMPT, seed=seed, sampler=name, **FAST)
        for name in ("euler_a", "ddim")
        for seed in (2, 3)
    ]
    together = engine.run(mixed)
    for request, image in zip(mixed, together, strict=True):
        (single,) = engine.run([request])
        assert pixel_difference(image, single) < 0.5, request.sampler
    assert pixel_difference(together[0], alone["euler_a"]) < 0.5


def _unet_batches(engine) -> list[int]:
    """The batch size of every UNet call the engine makes from now on."""
    sizes: list[int] = []
    engine.txt2img.unet.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    return sizes


def test_requests_with_different_adapters_and_weights_share_one_batch_each_as_if_alone(served, artifacts):
    """LoRA, LoHa, LoKr, DoRA, an embedding, a mix of two at their own weights and the bare base:
    one UNet call per step for all of them, and each image is the one its request gets alone."""
    _, store, _ = served
    routes = store.latest_routes("dreamloom").with_adapter("hex-dora", "1", artifacts["dora"], {"champion": "1"})
    engine = Engine(EngineConfig("toy", routes))
    mixed = [
        ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=1, **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=2, adapter="hex-loha*0.7", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=3, adapter="hex-lokr@champion", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=4, adapter="hex-dora", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=5, adapter="hex-lora*0.4, hex-lokr*0.8", **FAST),
        ImageRequest("a <hex-shape> on a gray background", seed=6, adapter="hex-textual-inversion", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora", adapter_scale=0.5, **FAST),
    ]
    batches = _unet_batches(engine)
    together = engine.run(mixed)
    assert batches == [2 * len(mixed)] * FAST["steps"]  # one batch (classifier-free guidance doubles it)
    for request, image in zip(mixed, together, strict=True):
        (alone,) = engine.run([request])
        assert pixel_difference(image, alone) < 0.5, request.adapter
    assert pixel_difference(together[0], together[1]) > 2.0  # the adapters acted inside the batch
    assert pixel_difference(together[0], together[7]) > 0.5  # and at each request's own weight


def test_a_hypernetwork_or_controlnet_batches_only_with_requests_naming_the_same(served):
    _, store, _ = served
    engine = Engine(EngineConfig("toy", store.latest_routes("dreamloom")))
    requests = [
        ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=2, adapter="hex-hypernetwork", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=3, adapter="hex-hypernetwork, hex-lokr", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=4, adapter="hex-hypernetwork*0.5", **FAST),
    ]
    batches = _unet_batches(engine)
    together = engine.run(requests)
    assert sorted(batches) == sorted([2] * FAST["steps"] * 2 + [4] * FAST["steps"])
    for request, image in zip(requests, together, strict=True):
        assert pixel_difference(image, engine.run([request])[0]) < 0.5, request.adapter


def test_a_batch_whose_adapters_exceed_the_budget_together_runs_in_parts(served, artifacts):
    from dreamloom.serving.adapters import weights_size

    _, store, _ = served
    engine = Engine(EngineConfig("toy", store.latest_routes("dreamloom")))
    engine.adapters.budget_bytes = max(weights_size(artifacts[name]) for name in ("lora", "lokr")) + 1024
    requests = [
        ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=2, adapter="hex-lokr", **FAST),
        ImageRequest(INSTANCE_PROMPT, seed=3, adapter="hex-lora*0.5", **FAST),
    ]
    batches = _unet_batches(engine)
    together = engine.run(requests)
    assert sorted(batches) == [2] * FAST["steps"] + [4] * FAST["steps"]  # the two LoRA requests, then the LoKr
    for request, image in zip(requests, together, strict=True):
        assert pixel_difference(image, engine.run([request])[0]) < 0.5, request.adapter


def test_concurrent_requests_with_different_adapters_through_triton_each_match_their_solo_image(served):
    _, _, client = served
    adapters = ["hex-lora", "hex-lokr", "hex-loha*0.5", "", "hex-lora*0.5, hex-loha"]
    requests = [ImageRequest(INSTANCE_PROMPT, seed=8, adapter=adapter, **FAST) for adapter in adapters]
    together = client.generate_many(requests * 2, concurrency=8)
    for request, image in zip(requests * 2, together, strict=True):
        alone = client.generate(replace(request, solo=True))
        assert pixel_difference(image, alone) < 0.5, request.adapter


def _successes(store, server) -> int:
    with ServingClient(server.http_url, admin_key=store.admin_key()) as admin:
        versions = admin.statistics()["model_stats"]
    return sum(int(version["inference_stats"]["success"]["count"]) for version in versions)


def test_the_load_tool_drives_triton_with_a_mix_and_reports_rates_percentiles_and_failures(served, tmp_path):
    import json

    server, store, _ = served
    before = _successes(store, server)
    mix = ["--adapter", "hex-lora", "--adapter", "hex-lokr@champion", "--mode", "txt2img", "--mode", "img2img"]
    common = ["loadtest", "--url", server.http_url, "--steps", "2", "--size", "64", "--concurrency", "3"]
    assert main([*common, *mix, "--requests", "6", "--out", str(tmp_path / "load.json")]) == 0
    report = json.loads((tmp_path / "load.json").read_text())
    assert report["requests"] == 6 and report["failures"] == 0 and report["adapters"] == 2
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert report["images_per_second"] > 0
    assert _successes(store, server) - before == 6 + 2  # the measured requests and one warm-up per adapter

    refused = ["--adapter", "hex-lora", "--adapter", "no-such-adapter@champion", "--warmup", "0"]
    assert main([*common, *refused, "--requests", "4", "--out", str(tmp_path / "refused.json")]) == 1
    report = json.loads((tmp_path / "refused.json").read_text())
    assert report["failures"] == 2 and report["failures_by_status"] == {"400": 2}
    assert "unknown adapter 'no-such-adapter'" in report["first_errors"][0]
    assert report["latency_ms"]["max"] > 0  # the two that succeeded were measured


def test_the_adapter_cache_evicts_least_recently_used_under_its_budget(served, artifacts):
    _, store, _ = served
    routes = store.latest_routes("dreamloom")
    lora_key, lora_folder = routes.resolve("hex-lora")
    hn_key, hn_folder = routes.resolve("hex-hypernetwork")
    from dreamloom.serving.adapters import weights_size

    budget = max(weights_size(lora_folder), weights_size(hn_folder)) + 1024
    engine = Engine(EngineConfig("toy", routes, adapter_budget_mib=1))
    engine.adapters.budget_bytes = budget
    first = engine.run([ImageRequest(INSTANCE_PROMPT, seed=2, adapter="hex-lora", **FAST)])[0]
    engine.run([ImageRequest(INSTANCE_PROMPT, seed=2, adapter="hex-hypernetwork", **FAST)])
    assert list(engine.adapters.loaded) == [hn_key] and engine.adapters.evictions == 1
    assert engine.adapters.used_bytes <= budget
    again = engine.run([ImageRequest(INSTANCE_PROMPT, seed=2, adapter="hex-lora", **FAST)])[0]
    assert list(engine.adapters.loaded) == [lora_key] and engine.adapters.loads == 3
    assert np.array_equal(first, again)


def test_the_engine_serves_the_base_in_the_deployments_precision(served):
    _, store, _ = served
    routes = store.latest_routes("dreamloom")
    engine = Engine(EngineConfig("toy", routes, precision="bf16"))
    assert {engine.txt2img.unet.dtype, engine.txt2img.vae.dtype, engine.inpaint.unet.dtype} == {torch.bfloat16}
    (image,) = engine.run([ImageRequest(INSTANCE_PROMPT, **FAST)])
    assert image.dtype == np.uint8 and image.std() > 0
    assert Engine(EngineConfig("toy", routes)).txt2img.unet.dtype == torch.float32  # auto, without native bf16


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_a_compiled_deployment_compiles_before_serving_and_renders_what_eager_renders(served):
    """Only textual inversion deployed: the UNet and VAE decoder compile during the warm-up (batch
    and size made dynamic there), later requests of other sizes and batch sizes compile nothing,
    and each image matches the eager engine's."""
    from dreamloom.serving.routes import Routes

    _, store, _ = served
    full = store.latest_routes("dreamloom")
    embeddings_only = Routes("toy", adapters={"hex-textual-inversion": full.adapters["hex-textual-inversion"]})
    eager = Engine(EngineConfig("toy", embeddings_only))
    compiled = Engine(EngineConfig("toy", embeddings_only, compile=True, channels_last=True))
    assert compiled.compiled == ["vae decoder", "unet"] and eager.compiled == []
    assert compiled.txt2img.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    compiled.warm_up()
    graphs = _compiled_graphs()
    requests = [
        ImageRequest(f"a <hex-shape> {colour}", adapter="hex-textual-inversion", seed=seed, width=96, height=64, **FAST)
        for seed, colour in enumerate(("in red", "in blue", "on grey"))
    ]
    for got, want in zip(compiled.run(requests), eager.run(requests), strict=True):
        assert pixel_difference(got, want) < 2.0
    assert _compiled_graphs() == graphs  # served from the warm-up's graphs: no request waited for a compile


def test_a_compiled_deployment_serving_lora_family_adapters_keeps_its_unet_eager(served):
    """Each batch's mix of LoRAs patches the UNet's layers: compiled, it would recompile per mix."""
    _, store, _ = served
    engine = Engine(EngineConfig("toy", store.latest_routes("dreamloom"), compile=True))
    assert engine.compiled == ["vae decoder"]
    assert getattr(engine.txt2img.unet, "_compiled_call_impl", None) is None
    assert engine.txt2img.vae.decoder._compiled_call_impl is not None


def test_a_dreambooth_artifact_is_not_an_adapter(served, artifacts):
    _, store, _ = served
    engine_routes = store.latest_routes("dreamloom").with_adapter("db", "1", artifacts["dreambooth"], {"champion": "1"})
    engine = Engine(EngineConfig("toy", engine_routes))
    (result,) = engine.run([ImageRequest(INSTANCE_PROMPT, adapter="db", **FAST)])
    assert isinstance(result, RequestError) and "own model" in str(result)


def test_a_dreambooth_model_serves_its_own_text_encoder_in_every_mode(served, artifacts):
    from safetensors.torch import load_file

    _, store, _ = served
    folder = artifacts["dreambooth"]
    engine = Engine(EngineConfig("toy", store.latest_routes("dreamloom"), dreambooth=str(folder)))
    trained = load_file(folder / "text_encoder" / "model.safetensors")
    served_weights = engine.txt2img.text_encoder.state_dict()
    assert all(
        torch.equal(served_weights[name], tensor.to(served_weights[name].dtype)) for name, tensor in trained.items()
    )
    base = Engine(EngineConfig("toy", store.latest_routes("dreamloom"))).txt2img.text_encoder.state_dict()
    assert any(not torch.equal(base[name], served_weights[name]) for name in trained)
    assert engine.img2img.text_encoder is engine.txt2img.text_encoder is engine.inpaint.text_encoder


# ----- bad requests -----


def _bad_requests() -> list[tuple[dict, str]]:
    bomb = _png(Image.new("RGB", (5000, 4000), "white"))  # a small file, 20 megapixels decoded
    return [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "a red square " * 40}, "tokens"),
        ({"steps": 0}, "steps"),
        ({"steps": 1000}, "steps"),
        ({"width": 100}, "multiple of 8"),
        ({"guidance": 99.0}, "guidance"),
        ({"adapter": "hex-lora", "adapter_scale": 5.0}, "adapter_scale"),
        ({"adapter": "nobody@champion"}, "unknown adapter 'nobody'"),
        ({"adapter": "hex-lora/99"}, "no deployed version 99"),
        ({"mode": "paint"}, "unknown mode"),
        ({"mode": "img2img"}, "needs INIT_IMAGE"),
        ({"mode": "img2img", "init_image": b"not an image"}, "cannot be decoded"),
        ({"mode": "img2img", "init_image": bomb}, "pixels"),
        ({"mode": "inpaint", "init_image": _png(SCENE), "mask": square_mask_png((32, 32))}, "MASK is 32x32"),
        ({"mode": "controlnet", "control_image": _png(SCENE)}, "ControlNet"),
        ({"adapter": "hex-lora, hex-controlnet"}, "is a ControlNet: use mode controlnet"),
        ({"adapter": "hex-lora*lots"}, "is not a number"),
        ({"adapter": "hex-lora, hex-lora"}, "named twice"),
        ({"adapter": "hex-lora*3"}, "out of range"),
        ({"adapter": "a, b, c, d, e"}, "at most 4"),
        ({"adapter": "hex-controlnet*0.5", "mode": "controlnet", "control_image": _png(SCENE)}, "CONTROL_SCALE"),
    ]


def test_bad_requests_get_an_error_naming_the_problem_and_the_server_stays_ready(served):
    _, _, client = served
    for fields, message in _bad_requests():
        request = ImageRequest(**{"prompt": "a red square", **FAST, **fields})
        with pytest.raises(ServingError, match=message):
            client.generate(request, check=False)
    assert client.ready()
    assert client.generate(ImageRequest("a red square", **FAST)).shape == (64, 64, 3)


# ----- deploys -----


def test_a_deploy_under_load_fails_no_request_and_the_new_version_answers(served, artifacts):
    server, store, client = served
    register_champion(artifacts["lora_v2"], "hex-lora")
    failures, answered, stop = [], [], threading.Event()

    def keep_asking():
        caller = ServingClient(server.http_url)
        while not stop.is_set():
            try:
                caller.generate(ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora@champion", **FAST))
                answered.append(time.monotonic())
            except Exception as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=keep_asking) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    result = deploy("hex-lora@champion", server.http_url, store=store)
    finished = time.monotonic()
    while len([t for t in answered if t > finished]) < 4:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    assert result.version == "2" and store.latest_routes("dreamloom").resolve("hex-lora@champion")[0] == "hex-lora/2"
    newest = client.generate(ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora@champion", **FAST))
    assert np.array_equal(newest, client.generate(ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora/2", **FAST)))
    assert not np.array_equal(
        newest, client.generate(ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora/1", **FAST))
    )
    assert result.triton_version in ServingClient(server.http_url, admin_key=store.admin_key()).model_versions()


def test_rolling_back_in_the_registry_and_deploying_the_champion_serves_the_previous_version(served, capsys):
    from dreamloom.registry import rollback

    server, store, client = served
    rollback("hex-lora")
    assert main(["deploy", "hex-lora@champion", "--url", server.http_url, "--store", str(store.root)]) == 0
    assert "deployed hex-lora version 1 as ADAPTER 'hex-lora/1'" in capsys.readouterr().out
    request = ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora@champion", **FAST)
    previous = ImageRequest(INSTANCE_PROMPT, seed=1, adapter="hex-lora/1", **FAST)
    assert np.array_equal(client.generate(request), client.generate(previous))


def test_a_dreambooth_model_is_deployed_as_its_own_triton_model(served, artifacts):
    server, store, client = served
    register_champion(artifacts["dreambooth"], "hex-db")
    result = deploy("hex-db@champion", server.http_url, store=store)
    assert result.triton_model == "hex-db" and result.adapter == ""
    own = client.generate(ImageRequest(INSTANCE_PROMPT, seed=4, **FAST), model="hex-db")
    base = client.generate(ImageRequest(INSTANCE_PROMPT, seed=4, **FAST))
    assert pixel_difference(own, base) > 1.0


def test_refused_deploys_leave_the_serving_version_alone(served, tmp_path):
    from dreamloom.errors import DreamloomError
    from tests.helpers import draw_images, run_config

    server, store, client = served
    before = store.versions("dreamloom")
    with pytest.raises(DreamloomError, match="no model version"):
        deploy("nothing-here@champion", server.http_url, store=store)
    other_base = train_in_process(
        run_config(draw_images(tmp_path / "photos"), tmp_path / "tiny-lora", training__steps=1)
    )
    register_champion(other_base, "tiny-lora")
    with pytest.raises(DreamloomError, match="trained on tiny"):
        deploy("tiny-lora@champion", server.http_url, store=store)
    assert store.versions("dreamloom") == before and client.ready()
    assert not (store.adapters / "tiny-lora").exists()


def _break(folder: Path, how: str, restamp: bool = True) -> None:
    """Break a LoRA artifact in place the way a bad run or a damaged store would; ``restamp`` makes
    its manifest's file digests match again (only a deeper check finds it then)."""
    from safetensors.torch import load_file, save_file

    from dreamloom.artifacts import read_manifest, write_manifest

    weights = folder / "pytorch_lora_weights.safetensors"
    tensors = load_file(str(weights))
    if how == "missing file":
        weights.unlink()
    elif how == "wrong shapes":  # down-projections transposed: they fit no layer of the base
        save_file(
            {k: v.T.contiguous() if ("lora_A" in k or "lora.down" in k) else v for k, v in tensors.items()},
            str(weights),
        )
    elif how == "nan weights":
        save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(weights))
    if restamp:
        write_manifest(folder, read_manifest(folder, verify=False))


BROKEN = ("missing file", "wrong shapes", "nan weights")


@pytest.mark.parametrize("how", BROKEN)
def test_a_version_whose_new_adapter_cannot_answer_never_becomes_ready(served, artifacts, tmp_path, how):
    """What Triton runs while it loads a version (TritonPythonModel.initialize): a broken adapter
    fails the load, so the version never takes traffic, whatever got it past the checks before."""
    _, store, _ = served
    broken = tmp_path / "broken"
    shutil.copytree(artifacts["lora"], broken)
    _break(broken, how)
    routes = store.latest_routes("dreamloom")
    with pytest.raises(DreamloomError, match="adapter hex-broken/1 cannot serve"):
        Engine(EngineConfig("toy", routes.with_adapter("hex-broken", "1", broken, {}))).verify()
    Engine(EngineConfig("toy", routes.with_adapter("hex-ok", "1", artifacts["lora"], {}))).verify()


def _stored_copy(name: str, version: str) -> Path:
    """The folder MLflow's local artifact store keeps a registered version's artifact in."""
    from urllib.parse import urlparse

    from dreamloom.registry.store import client as registry

    mlflow = registry()
    stored = mlflow.get_model_version(name, version)  # the SQL store keeps the model in ``source`` only
    logged = mlflow.get_logged_model(stored.model_id or stored.source.removeprefix("models:/"))
    (manifest,) = Path(urlparse(logged.artifact_location).path).rglob("dreamloom.json")
    return manifest.parent


def test_refused_deploys_lose_no_request_and_leave_the_champion_answering(served, artifacts, tmp_path):
    """Under continuous load: stored artifacts altered after registration (digests restamped or
    not) are refused before Triton is touched, and a broken version written into the store past
    every check fails its load inside Triton. No request fails; the champion keeps answering."""
    from dreamloom.registry import register

    server, store, client = served
    # solo: two callers' requests would otherwise share a batch, whose floating-point order differs
    champion = ImageRequest(INSTANCE_PROMPT, seed=3, adapter="hex-lora@champion", solo=True, **FAST)
    expected = client.generate(champion)
    routes_before, versions_before = store.latest_routes("dreamloom"), store.versions("dreamloom")
    failures, served_count, stop = [], [0], threading.Event()

    def load() -> None:
        caller = ServingClient(server.http_url)
        while not stop.is_set():
            try:
                if not np.array_equal(caller.generate(champion), expected):
                    failures.append("the champion changed")
                served_count[0] += 1
            except ServingError as exc:
                failures.append(str(exc))
        caller.close()

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for how, restamp in (("nan weights", True), ("wrong shapes", False), ("missing file", True)):
            version = str(register(artifacts["lora_v2"], "hex-lora").version)
            _break(_stored_copy("hex-lora", version), how, restamp)
            with pytest.raises(DreamloomError, match=rf"deploy of hex-lora v{version} failed; Triton serves what it"):
                deploy(f"hex-lora/{version}", server.http_url, store=store)
            assert store.versions("dreamloom") == versions_before and store.latest_routes("dreamloom") == routes_before

        broken = tmp_path / "broken"
        shutil.copytree(artifacts["lora"], broken)
        _break(broken, "nan weights")
        admin = ServingClient(server.http_url, admin_key=store.admin_key())
        written = store.add_version(
            "dreamloom", routes_before.with_adapter("hex-lora", "99", broken, {"champion": "99"})
        )
        with pytest.raises(ServingError, match="adapter hex-lora/99 cannot serve"):
            admin.load_model()
        store.remove_version("dreamloom", written)
        admin.load_model()
        admin.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == [] and served_count[0] >= 3
    assert np.array_equal(client.generate(champion), expected)


def test_a_refused_deploy_of_the_champion_moves_the_registrys_champion_back_when_asked(served, artifacts):
    """The pipeline promotes, then deploys: when Triton refuses the new champion, the registry
    names the champion Triton still serves."""
    from dreamloom.registry import promote, register
    from dreamloom.registry.store import resolve

    server, store, _ = served
    before = str(resolve("hex-lora@champion").version)
    version = str(register(artifacts["lora_v2"], "hex-lora").version)
    _break(_stored_copy("hex-lora", version), "nan weights")
    promote("hex-lora", version, force=True, reason="test")
    with pytest.raises(DreamloomError, match=rf"failed; Triton serves .* champion was moved back to v{before}"):
        deploy("hex-lora@champion", server.http_url, store=store, restore_champion=True)
    assert str(resolve("hex-lora@champion").version) == before


# ----- command line -----


def test_generate_command_writes_the_images(served, tmp_path, capsys):
    server, _, _ = served
    out = tmp_path / "images"
    code = main(
        ["generate", "--url", server.http_url, "--prompt", "a red square on a white background", "--num-images", "3",
         "--steps", "4", "--adapter", "hex-lora@champion", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    saved = sorted(out.glob("*.png"))
    assert [p.name for p in saved] == ["000_seed0.png", "001_seed1.png", "002_seed2.png"]
    assert Image.open(saved[0]).size == (64, 64)


def test_check_command_proves_mlflow_triton_and_one_image_and_says_which_failed(served, capsys):
    """What the chart's `helm test` hook runs."""
    server, _, _ = served
    assert main(["check", "--triton-url", server.http_url]) == 0
    out = capsys.readouterr().out
    assert "[check] ok: MLflow at" in out and f"Triton at {server.http_url} serves 'dreamloom'" in out
    assert "[check] ok: one image rendered: 64x64" in out
    assert main(["check", "--triton-url", server.http_url, "--model-name", "missing"]) == EXIT_REFUSED
    assert "model 'missing' is not ready" in capsys.readouterr().err
    assert main(["check", "--triton-url", f"127.0.0.1:{free_port()}"]) == EXIT_UNREACHABLE
    assert "could not reach Triton" in capsys.readouterr().err


def test_generate_command_refuses_bad_input_before_sending(tmp_path, capsys):
    code = main(["generate", "--url", "127.0.0.1:1", "--prompt", "x", "--mode", "inpaint", "--out", str(tmp_path)])
    assert code == EXIT_INPUT
    assert "needs INIT_IMAGE" in capsys.readouterr().err


def test_serve_command_starts_triton_prints_the_urls_and_stops_on_sigterm(tmp_path):
    ports = [str(free_port()) for _ in range(3)]
    command = [sys.executable, "-m", "dreamloom.cli", "serve", "--store", str(tmp_path / "store"), "--http-port",
               ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
    lines = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "Ctrl-C stops it" in line or process.poll() is not None:
            break
    output = "".join(lines)
    assert f"HTTP     127.0.0.1:{ports[0]}" in output, output
    with ServingClient(f"127.0.0.1:{ports[0]}") as client:
        assert client.generate(ImageRequest("a red square", **FAST)).shape == (64, 64, 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert "stopping Triton" in process.stdout.read()
