"""The paths users run, on the real architectures (random weights built offline from the shipped
configs): train 2 steps at 128 px, register in MLflow, deploy to the real tritonserver, one image
per mode. About 80 s and 6-8 GiB each on 2 cores, so SD 1.5 and SD 2.1 run in `make test`; SDXL
(3.5 B parameters) trains and serves in bf16 to fit beside its Triton, and runs in
`make test-realsize` only (the xl marker)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamloom.serving.client import ServingClient
from dreamloom.serving.deploy import deploy
from dreamloom.serving.protocol import ImageRequest, encode_image
from dreamloom.serving.repository import ServingStore
from dreamloom.serving.server import TritonServer, free_port
from dreamloom.training.local import train_in_process
from dreamloom.training.precision import peak_rss_bytes
from tests.helpers import draw_images, register_champion, run_config

pytestmark = [pytest.mark.realsize, pytest.mark.slow, pytest.mark.timeout(3600)]
SIZE = 128


@pytest.mark.parametrize("base", ["sd15-random", "sd21-random", pytest.param("sdxl-random", marks=pytest.mark.xl)])
def test_a_real_architecture_trains_registers_deploys_and_serves_every_mode(base, tmp_path, capsys):
    from dreamloom.artifacts import read_manifest
    from dreamloom.registry.store import resolve

    started = time.monotonic()
    photos = draw_images(tmp_path / "photos", count=2, size=(160, 160))
    config = run_config(
        photos,
        tmp_path / "lora",
        base_model=base,
        data__resolution=SIZE,
        training__steps=2,
        training__batch_size=1,
        validation__steps=2,
        training__mixed_precision="bf16" if base == "sdxl-random" else "no",
    )
    artifact = train_in_process(config)
    assert read_manifest(artifact).base_model.random_weights
    trained = time.monotonic()
    name = f"real-{base}"
    version = register_champion(artifact, name)
    assert resolve(f"{name}@champion").tags["dreamloom.base_model_weights"] == "random"

    store = ServingStore(tmp_path / "store")
    precision = "bf16" if base == "sdxl-random" else "auto"
    store.ensure_model("dreamloom", base, max_batch_size=1, adapter_budget_mib=256, precision=precision)
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    server.start(timeout_s=900)
    try:
        deploy(f"{name}@champion", server.http_url, store=store)
        scene = encode_image(Image.new("RGB", (SIZE, SIZE), (200, 40, 40)))
        mask = Image.new("L", (SIZE, SIZE), 0)
        mask.paste(255, (32, 32, 96, 96))
        inpaint = {"init_image": scene, "mask": encode_image(mask)}
        modes = {"txt2img": {}, "img2img": {"init_image": scene}, "inpaint": inpaint}
        with ServingClient(server.http_url) as client:
            for mode, images in modes.items():
                request = ImageRequest("a photo of sks ball", mode=mode, width=SIZE, height=SIZE, steps=2,
                                       adapter=f"{name}@champion", **images)  # fmt: skip
                image = client.generate(request)
                assert image.shape == (SIZE, SIZE, 3) and np.isfinite(image).all()
        serving_peak = _peak_rss_of_tree(server.process.pid)
    finally:
        server.stop()
    with capsys.disabled():
        print(
            f"\n[realsize] {base}: trained in {trained - started:.0f} s, registered v{version}, "
            f"served 3 modes in {time.monotonic() - trained:.0f} s; peak RSS {peak_rss_bytes() / 2**30:.1f} GiB "
            f"(training), {serving_peak / 2**30:.1f} GiB (Triton and its python backend)"
        )


def _peak_rss_of_tree(pid: int) -> int:
    """The summed resident-memory high-water marks of a process and its descendants (Triton runs
    each python-backend model in a stub process of its own)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total


# Everything but DreamBooth on SDXL: its whole UNet in fp32 with optimizer state needs 26-40 GB,
# more than a 24 GB CPU machine has; the ControlNet fits with Adafactor (see test_plain_diffusers.py).
_RESUMED_ON_SDXL = ("lora", "textual-inversion", "pivotal", "hypernetwork", "controlnet")
_ON_REAL_SDXL = {"controlnet": {"optimizer__name": "adafactor", "training__gradient_checkpointing": True}}


def _resume_cases():
    from dreamloom.methods import METHODS

    heavy = [pytest.mark.xl]
    cases = [pytest.param("sd15-random", "lora", id="sd15-random-lora")]  # in make test
    cases += [
        pytest.param("sd15-random", m, marks=heavy, id=f"sd15-random-{m}") for m in sorted(METHODS) if m != "lora"
    ]
    cases += [pytest.param("sdxl-random", m, marks=heavy, id=f"sdxl-random-{m}") for m in _RESUMED_ON_SDXL]
    return cases


@pytest.mark.parametrize(("base", "method"), _resume_cases())
def test_a_real_architecture_resumes_from_a_checkpoint_exactly_in_bf16(base, method, tmp_path):
    """The real path of a resume: frozen weights stored in bf16, trained ones in fp32, latents
    encoded when first drawn (in another order after the restart): 2 + 1 steps end where 3
    straight steps end, bit for bit."""
    import gc

    import torch

    from dreamloom.training.checkpoint import load_training_state, save_training_state
    from dreamloom.training.preflight import plan_job
    from dreamloom.training.trainer import Trainer
    from tests.helpers import method_config

    photos = draw_images(tmp_path / "photos", count=3, size=(160, 160))
    options = {
        "base_model": base,
        "data__resolution": SIZE,
        "training__batch_size": 1,
        "training__steps": 3,
        "training__mixed_precision": "bf16",
        "optimizer__learning_rate": 1e-3,
        "prior__enabled": False,
        **(_ON_REAL_SDXL.get(method, {}) if base == "sdxl-random" else {}),
    }

    def trained(steps, output: str, checkpoint: Path | None = None, save_at: int | None = None) -> dict:
        trainer = Trainer(plan_job(method_config(method, photos, tmp_path / output, **options)))
        first = 1
        if checkpoint is not None:
            state = load_training_state(checkpoint)
            trainer.restore(state)
            first = state.step + 1
        for step in range(first, steps + 1):
            trainer.train_step(step)
        if save_at is not None:
            save_training_state(tmp_path / "checkpoint", trainer.snapshot(save_at))
        # Digests, not copies: three copies of an SDXL ControlNet's fp32 weights would not fit.
        tensors = trainer.method.trainable_state(trainer.model)
        assert all(tensor.dtype == torch.float32 for tensor in tensors.values())  # trained weights stay fp32
        state = {name: _digest(tensor) for name, tensor in tensors.items()}
        del tensors
        del trainer
        gc.collect()
        return state

    straight = trained(3, "straight")
    after_two = trained(2, "first", save_at=2)
    resumed = trained(3, "resumed", checkpoint=tmp_path / "checkpoint")
    assert straight and set(straight) == set(resumed)
    assert any(straight[name] != after_two[name] for name in straight)  # the third step trained
    different = [name for name in straight if straight[name] != resumed[name]]
    assert not different, f"{len(different)} of {len(straight)} tensors differ after resuming, e.g. {different[0]}"


def _digest(tensor) -> str:
    """The tensor's exact bytes, hashed (equal digests: bit-for-bit equal tensors)."""
    import hashlib

    import torch

    raw = tensor.detach().contiguous().cpu().view(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()
