"""Every test session gets its own work and cache folders, offline hub access and quiet engines."""

from __future__ import annotations

import os

import pytest

# Read by huggingface_hub when it is first imported, which happens while tests are collected.
os.environ["HF_HUB_OFFLINE"] = "1"
# `mixed_precision: auto` picks bf16 on CPUs with AMX/AVX512-BF16: tests compare numbers across
# runs and machines, so every test (and every process it starts) computes as a plain CPU does.
os.environ["DREAMLOOM_CPU_BF16"] = "0"
# Under pytest-xdist (`make test` runs two workers on two cores), each worker and everything it
# starts (Ray workers, Triton, pipeline steps) computes on one thread: the tiny models gain ~10%
# from a second thread, and two busy workers on two threads each would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    os.environ["DREAMLOOM_HOME"] = str(tmp_path_factory.mktemp("home"))
    os.environ["DREAMLOOM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    # pytest-xdist runs two test processes on CI's two cores: each one's Ray (and the KFP steps it
    # starts) offers one core, so that two trainings side by side do not fight over both.
    os.environ["DREAMLOOM_RAY_CPUS"] = "1"
    for inherited in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        os.environ.pop(inherited, None)
    from dreamloom.logs import quiet_library_logging
    from dreamloom.settings import apply_quiet_defaults

    apply_quiet_defaults()
    quiet_library_logging()
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def tiny_base():
    from dreamloom.models import resolve_base_model

    return resolve_base_model("tiny")


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory):
    """One real LoRA run (two Ray workers, 10 steps) shared by the tests that need an artifact."""
    from dreamloom.training.local import train
    from tests.helpers import draw_images, run_config

    root = tmp_path_factory.mktemp("lora-run")
    photos = draw_images(root / "photos", count=4, captions=True)
    config = run_config(
        photos,
        root / "sneaker-lora",
        training__steps=10,
        training__checkpoint_every=5,
        validation__every=5,
        optimizer__learning_rate=5e-3,
        lora__rank=4,
        lora__alpha=8,
        data__trigger_token="sks",
        scaling__workers=2,
    )
    # Tracked in the session's default store, whichever test asks first: under pytest-xdist a
    # module that points MLFLOW_TRACKING_URI at its own mlflow server may be the first.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return train(config), config, photos
