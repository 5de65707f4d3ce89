"""The request protocol and the routes, without a server."""

from __future__ import annotations

import io

import pytest
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from dreamloom.errors import DreamloomError
from dreamloom.serving.protocol import ImageRequest, RequestError, decode_image, encode_image, from_arrays, to_arrays
from dreamloom.serving.repository import ServingStore, model_config
from dreamloom.serving.routes import Routes


def _png(size=(64, 64), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_request_round_trips_through_triton_tensors_leaving_defaults_out():
    request = ImageRequest("a cat", mode="img2img", init_image=_png(), seed=2**40, strength=0.5, steps=3)
    arrays = to_arrays(request)
    assert set(arrays) == {"PROMPT", "MODE", "INIT_IMAGE", "SEED", "STRENGTH", "STEPS"}
    assert from_arrays(arrays.get) == request


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"steps": 0}, "steps"),
        ({"height": 4096}, "multiple of 8 from 64"),
        ({"strength": 0.0}, "strength"),
        ({"mode": "inpaint", "init_image": b"x"}, "needs MASK"),
        ({"mode": "controlnet"}, "needs CONTROL_IMAGE"),
    ],
)
def test_out_of_range_requests_are_refused_with_the_field_named(fields, message):
    with pytest.raises(RequestError, match=message):
        ImageRequest(**{"prompt": "a cat", **fields}).check()


def test_images_are_decoded_converted_and_bombs_refused():
    assert decode_image("init_image", _png(mode="RGBA")).mode == "RGB"
    assert decode_image("mask", _png(mode="RGB"), "L").mode == "L"
    with pytest.raises(RequestError, match="INIT_IMAGE cannot be decoded"):
        decode_image("init_image", _png()[:40])
    with pytest.raises(RequestError, match="pixels"):
        decode_image("init_image", _png((5000, 4000), mode="L"))
    assert encode_image(decode_image("x", _png()))[:4] == b"\x89PNG"


def test_routes_resolve_aliases_versions_and_name_what_is_wrong(tmp_path):
    routes = Routes("toy").with_adapter("shoe", "1", tmp_path / "1", {"champion": "1"})
    routes = routes.with_adapter("shoe", "2", tmp_path / "2", {"champion": "2", "challenger": "3"})
    assert routes.resolve("shoe@champion") == ("shoe/2", tmp_path / "2")
    assert routes.resolve("shoe") == ("shoe/2", tmp_path / "2")
    assert routes.resolve("shoe/1") == ("shoe/1", tmp_path / "1")
    assert routes.adapters["shoe"].aliases == {"champion": "2"}  # challenger points at an undeployed version
    for reference, message in [
        ("hat@champion", "unknown adapter 'hat'"),
        ("shoe@challenger", "no alias"),
        ("shoe/7", "no deployed version 7"),
        ("shoe@@x", "write NAME@ALIAS"),
    ]:
        with pytest.raises(RequestError, match=message):
            routes.resolve(reference)
    routes.save(tmp_path)
    assert Routes.load(tmp_path) == routes


def test_the_store_adds_versions_whole_and_never_rewrites_them(tmp_path):
    store = ServingStore(tmp_path / "store")
    store.ensure_model("dreamloom", "toy", max_batch_size=4)
    store.ensure_model("dreamloom", "toy")  # exists: unchanged
    assert store.versions("dreamloom") == [1]
    second = store.add_version("dreamloom", Routes("toy").with_adapter("a", "1", tmp_path, {}))
    assert second == 2 and store.versions("dreamloom") == [1, 2]
    assert store.latest_routes("dreamloom").adapters["a"].versions == {"1": str(tmp_path)}
    assert not [p for p in store.model_folder("dreamloom").iterdir() if p.name.startswith(".")]  # no staging left
    text = (store.model_folder("dreamloom") / "config.pbtxt").read_text()
    assert text == model_config("dreamloom", max_batch_size=4)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())  # what Triton will read
    assert config.max_batch_size == 4 and config.backend == "python"
    prompt, *others = config.input
    assert (prompt.name, prompt.data_type, list(prompt.dims), prompt.optional) == (
        "PROMPT",
        model_config_pb2.TYPE_STRING,
        [1],
        False,
    )
    assert others and all(tensor.optional for tensor in others)
    assert list(config.output[0].dims) == [-1, -1, 3] and config.output[0].data_type == model_config_pb2.TYPE_UINT8
    assert config.parameters["adapter_budget_mib"].string_value == "512"
    assert config.parameters["precision"].string_value == "auto"


def test_serving_precision_is_a_deployment_setting_checked_before_it_is_written(tmp_path):
    store = ServingStore(tmp_path / "store")
    store.ensure_model("xl", "toy", precision="bf16")
    config = text_format.Parse((store.model_folder("xl") / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.parameters["precision"].string_value == "bf16"
    with pytest.raises(DreamloomError, match="fp16 inference needs a GPU; use bf16 or fp32"):
        store.ensure_model("cpu-fp16", "toy", precision="fp16")
    with pytest.raises(DreamloomError, match="unknown precision 'int4'"):
        store.ensure_model("int4", "toy", precision="int4")
    assert not store.versions("cpu-fp16") and not store.versions("int4")  # nothing half-written
    assert model_config("gpu", gpu=True, precision="fp16")  # fine where it runs


def test_the_checked_in_model_repository_is_what_the_code_writes(tmp_path):
    from pathlib import Path

    from dreamloom.serving.repository import main

    main(["--out", str(tmp_path / "repo"), "--gpu", "--base-model", "stable-diffusion-v1-5/stable-diffusion-v1-5"])
    checked_in = Path(__file__).parents[1] / "serving" / "model_repository"
    written = {p.relative_to(tmp_path / "repo"): p.read_text() for p in (tmp_path / "repo").rglob("*") if p.is_file()}
    expected = {p.relative_to(checked_in): p.read_text() for p in checked_in.rglob("*") if p.is_file()}
    assert written == expected, "serving/model_repository is stale: regenerate it (see serving/README.md)"


def test_the_admin_key_is_made_once_private_to_its_owner_and_can_come_from_the_environment(tmp_path, monkeypatch):
    import os
    import stat

    from dreamloom.serving.repository import ADMIN_KEY_ENV

    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    store = ServingStore(tmp_path / "store")
    assert store.admin_key() is None  # never made by a reader
    key = store.admin_key(create=True)
    path = store.root / "admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) >= 32
    assert store.admin_key(create=True) == store.admin_key() == key
    monkeypatch.setenv(ADMIN_KEY_ENV, "k" * 40)  # a Kubernetes Secret, in a cluster
    assert store.admin_key() == "k" * 40
    monkeypatch.setenv(ADMIN_KEY_ENV, "short,key:with=flags")
    with pytest.raises(DreamloomError, match="24-256 letters"):
        store.admin_key()
    monkeypatch.delenv(ADMIN_KEY_ENV)
    os.chmod(path, 0o644)
    with pytest.raises(DreamloomError, match="chmod 600"):
        store.admin_key()


def test_triton_never_starts_with_its_admin_apis_open(tmp_path):
    from dreamloom.serving.server import ADMIN_HEADER, TritonServer

    store = ServingStore(tmp_path / "store")
    with pytest.raises(DreamloomError, match="model-control API open"):
        TritonServer(store.models, ["dreamloom"]).command()
    command = TritonServer.for_store(store, ["dreamloom"]).command()
    restricted = (
        f"model-repository,model-config,shared-memory,statistics,trace,logging:{ADMIN_HEADER}={store.admin_key()}"
    )
    assert f"--http-restricted-api={restricted}" in command
    assert f"--grpc-restricted-protocol={restricted}" in command


def test_integers_are_refused_before_numpy_would_wrap_them():
    with pytest.raises(RequestError, match="steps 1099511627776 is out of range"):
        to_arrays(ImageRequest("a shape", steps=2**40))  # int32 would make it 0
    with pytest.raises(RequestError, match="width -1 is out of range"):
        ImageRequest("a shape", width=-1).check()
    assert to_arrays(ImageRequest("a shape", seed=2**63 - 1))["SEED"].item() == 2**63 - 1


def test_refusal_messages_carry_no_server_paths():
    from dreamloom.serving.triton_model import public_message

    message = "adapter /srv/dreamloom/serving/adapters/shoe/3/pytorch_lora_weights.safetensors is missing"
    assert public_message(message) == "adapter pytorch_lora_weights.safetensors is missing"
    assert public_message("see http://docs.example/a/b and 3/4") == "see http://docs.example/a/b and 3/4"


# ----- samplers -----


@pytest.mark.parametrize(
    "written, canonical",
    [
        ("", "dpmpp_2m"),
        ("DPM++ 2M Karras", "dpmpp_2m_karras"),
        ("dpm++-2m-sde-karras", "dpmpp_2m_sde_karras"),
        ("Euler a", "euler_a"),
        ("euler_ancestral", "euler_a"),
        ("PLMS", "pndm"),
        ("UniPC", "unipc"),
        ("lcm", "lcm"),
    ],
)
def test_a_sampler_is_named_the_a1111_or_the_diffusers_way(written, canonical):
    request = ImageRequest("a cat", sampler=written)
    request.check()
    assert request.sampler_name() == canonical


def test_an_unknown_sampler_is_refused_naming_the_choices():
    with pytest.raises(RequestError, match=r"unknown sampler 'k_lms_fast'; choose one of dpmpp_2m, .*euler_a"):
        ImageRequest("a cat", sampler="k_lms_fast").check()


def test_the_sampler_travels_as_a_tensor_and_splits_batches():
    request = ImageRequest("a cat", sampler="Euler a")
    arrays = to_arrays(request)
    assert arrays["SAMPLER"].tolist() == [[b"Euler a"]]
    assert from_arrays(arrays.get) == request
    assert request.batch_key() != ImageRequest("a cat", sampler="euler").batch_key()
    assert ImageRequest("a cat", sampler="dpmpp_2m").batch_key() == ImageRequest("a cat").batch_key()


def test_every_sampler_is_built_from_the_bases_config_whatever_it_was_made_from():
    """SD 2.x's v-prediction and the base's betas carry over to every sampler, and through a
    chain of samplers (DDIM keeps the base's clip_sample, which DPM-Solver does not take)."""
    from diffusers import DDPMScheduler

    from dreamloom.samplers import SAMPLERS, make_scheduler

    base = DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False).config
    current = make_scheduler("dpmpp_2m_karras", base)
    for name, sampler in SAMPLERS.items():
        current = make_scheduler(name, current.config)
        assert type(current).__name__ == sampler.scheduler
        assert current.config.beta_schedule == "scaled_linear"
        if "prediction_type" in current.config:
            assert current.config.prediction_type == "v_prediction", name
        if "use_karras_sigmas" in current.config:
            assert current.config.use_karras_sigmas == ("karras" in name), name
    assert make_scheduler("ddim", current.config).config.clip_sample is False


def test_the_checked_in_triton_model_takes_every_request_field():
    """The repository the Triton image seeds its volume from (serving/model_repository) declares
    every input the protocol sends: a field added to the protocol and not there is refused."""
    from pathlib import Path

    from dreamloom.serving.protocol import TENSORS

    checked_in = Path(__file__).parents[1] / "serving" / "model_repository" / "dreamloom" / "config.pbtxt"
    config = text_format.Parse(checked_in.read_text(), model_config_pb2.ModelConfig())
    assert [item.name for item in config.input] == [name for name, _, _ in TENSORS.values()]


# ----- the load tool's plan and arithmetic -----


def test_a_load_plan_cycles_adapters_and_modes_and_refuses_what_cannot_run():
    from dreamloom.serving.loadtest import LoadPlan

    plan = LoadPlan(requests=5, warmup=1, adapters=("a@champion", "b@champion", ""), modes=("txt2img", "inpaint"))
    requests = plan.build()
    assert [r.adapter for r in requests] == ["a@champion", "b@champion", "", "a@champion", "b@champion", ""]
    assert [r.mode for r in requests] == ["txt2img", "inpaint"] * 3
    assert [r.seed for r in requests] == list(range(6)) and requests[1].mask and requests[1].init_image
    with pytest.raises(DreamloomError, match="load modes are txt2img, img2img, inpaint"):
        LoadPlan(modes=("controlnet",))
    with pytest.raises(DreamloomError, match="concurrency 0 is out of range"):
        LoadPlan(concurrency=0)
    with pytest.raises(RequestError, match="unknown sampler"):
        LoadPlan(sampler="nope").build()


def test_latency_percentiles_interpolate_between_ranks():
    from dreamloom.serving.loadtest import latency_summary

    summary = latency_summary([n / 1000 for n in range(1, 101)])  # 1..100 ms
    assert summary == {"p50": 50.5, "p95": 95.0, "p99": 99.0, "mean": 50.5, "max": 100.0}
    assert latency_summary([0.2])["p99"] == 200.0 and latency_summary([]) == {}
