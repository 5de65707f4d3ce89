"""Training for real: Ray Train with two DDP workers, MLflow, artifacts that load."""

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from dreamloom.artifacts import read_manifest
from dreamloom.data import dataset_hash
from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.generation import GenerationRequest, generate
from dreamloom.inference import load_artifact_pipeline
from dreamloom.interop import export_kohya, import_kohya
from dreamloom.models import load_base_model, pipeline_from_components, resolve_base_model
from dreamloom.settings import tracking_uri
from dreamloom.tracking import client
from dreamloom.training.local import train
from dreamloom.training.prior import class_images_folder
from tests.helpers import draw_images, method_config, run_config

pytestmark = pytest.mark.slow

REQUEST = GenerationRequest(["a photo of sks ball"], images_per_prompt=2, steps=4, seed=3)


def _render(pipe) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in generate(pipe, REQUEST, 64)[0]])


@pytest.fixture(scope="module")
def base_images() -> np.ndarray:
    return _render(pipeline_from_components(load_base_model(resolve_base_model("tiny"))))


def test_lora_artifact_loads_with_diffusers_and_changes_the_images(lora_run, base_images):
    result, _, _ = lora_run
    pipe, _ = load_artifact_pipeline(result.artifact)
    trained = _render(pipe)
    assert np.abs(trained - base_images).mean() > 1.0  # pixel levels, 0-255
    plain = pipeline_from_components(load_base_model(resolve_base_model("tiny")))
    plain.load_lora_weights(str(result.artifact))  # diffusers' own loader, no dreamloom code
    assert np.array_equal(_render(plain), trained)


def test_mlflow_holds_config_lineage_metrics_grids_and_artifact(lora_run):
    result, _, photos = lora_run
    mlflow = client(tracking_uri())
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "lora"
    assert run.data.params["training.steps"] == "10" and run.data.params["scaling.workers"] == "2"
    assert run.data.tags["dreamloom.dataset_hash"] == dataset_hash(photos)
    (training_data,) = run.inputs.dataset_inputs  # the UI's Datasets column: source and content digest
    folder = str(photos.absolute())
    assert training_data.dataset.name == folder and folder in training_data.dataset.source
    assert dataset_hash(photos).split(":")[1].startswith(training_data.dataset.digest)
    assert {(tag.key, tag.value) for tag in training_data.tags} == {("mlflow.data.context", "training")}
    assert run.data.tags["dreamloom.base_model"] == "tiny"
    assert run.data.tags["dreamloom.base_model_revision"] == resolve_base_model("tiny").revision
    losses = mlflow.get_metric_history(result.mlflow_run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, 11))
    for metric in ("lr", "images_per_second", "step_seconds", "peak_memory_mib", "median_step_seconds"):
        assert mlflow.get_metric_history(result.mlflow_run_id, metric), metric
    files = _artifact_paths(mlflow, result.mlflow_run_id)
    assert {"run.yaml", "dataset/dataset.json", "samples/step_000005.png", "samples/step_000010.png"} <= files
    assert {
        "artifact/pytorch_lora_weights.safetensors",
        "artifact/dreamloom.json",
        "artifact/samples/final.png",
    } <= files


def test_a_run_accounts_for_its_seconds_phase_by_phase(lora_run):
    """Where a run's time goes beyond its steps (issue 16's fixed cost): each phase in MLflow."""
    result, _, _ = lora_run
    metrics = client(tracking_uri()).get_run(result.mlflow_run_id).data.metrics
    phases = {key.removeprefix("seconds/"): value for key, value in metrics.items() if key.startswith("seconds/")}
    expected = {"checks_and_data", "tracking", "ray_start", "model_and_caches", "steps", "sample_grids"}
    assert expected | {"checkpoints", "ray_train_workers", "publishing", "total"} == set(phases)
    assert all(phases[name] > 0 for name in expected | {"checkpoints", "publishing"})
    assert phases["total"] == pytest.approx(sum(v for k, v in phases.items() if k != "total"))
    # Rank 0's ten steps, timed one by one, sum to the steps phase.
    steps = client(tracking_uri()).get_metric_history(result.mlflow_run_id, "step_seconds")
    assert phases["steps"] == pytest.approx(sum(m.value for m in steps), rel=0.05)


def _artifact_paths(mlflow, run_id: str, folder: str | None = None) -> set[str]:
    paths = set()
    for entry in mlflow.list_artifacts(run_id, folder):
        paths |= _artifact_paths(mlflow, run_id, entry.path) if entry.is_dir else {entry.path}
    return paths


def test_manifest_records_lineage_and_guards_the_files(lora_run, tmp_path):
    result, _, photos = lora_run
    manifest = read_manifest(result.artifact)
    assert manifest.method == "lora" and manifest.artifact_kind == "lora"
    assert manifest.base_model.revision == resolve_base_model("tiny").revision
    assert manifest.dataset_hash == dataset_hash(photos)
    assert manifest.trigger_token == "sks" and manifest.resolution == 64 and manifest.steps == 10
    assert manifest.mlflow_run_id == result.mlflow_run_id
    assert "pytorch_lora_weights.safetensors" in manifest.files
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in result.artifact.iterdir():
        if path.is_file():
            (damaged / path.name).write_bytes(path.read_bytes())
    weights = damaged / "pytorch_lora_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="incomplete or modified"):
        read_manifest(damaged)


def test_kohya_export_then_import_reproduces_the_images(lora_run, tmp_path):
    result, _, _ = lora_run
    exported = export_kohya(result.artifact, tmp_path / "sneaker.safetensors")
    tensors = load_file(str(exported))
    assert any(
        k.startswith("lora_unet_down_blocks_1_attentions_0_") and k.endswith(".lora_down.weight") for k in tensors
    )
    alphas = {float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas == {8.0}  # alpha travels (rank is 4), so the strength is preserved
    import_kohya(exported, "tiny", tmp_path / "imported")
    original, _ = load_artifact_pipeline(result.artifact)
    imported, _ = load_artifact_pipeline(tmp_path / "imported")
    assert np.array_equal(_render(imported), _render(original))


def test_a_finished_run_is_not_silently_rerun(lora_run, tmp_path):
    result, config, _ = lora_run
    with pytest.raises(DreamloomError, match="already holds a finished artifact"):
        train(config)
    # checkpoints follow the output folder: another folder under the same run name is not this run
    elsewhere = config.model_copy(update={"output": tmp_path / "elsewhere", "run_name": result.run_name})
    with pytest.raises(DreamloomError, match="nothing to resume"):
        train(elsewhere, resume=True)
    assert not (tmp_path / "elsewhere").exists()


def test_dreambooth_with_prior_preservation_on_two_workers(tmp_path, base_images):
    photos = draw_images(tmp_path / "photos", count=2)
    config = run_config(
        photos,
        tmp_path / "dreambooth",
        method="dreambooth",
        prior__class_prompt="a photo of a ball",
        prior__num_class_images=4,
        prior__generation_steps=2,
        optimizer__learning_rate=1e-3,
        training__steps=4,
        scaling__workers=2,
    )
    result = train(config)
    folder = class_images_folder(resolve_base_model("tiny"), config.prior, config.data.resolution)
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]  # two per worker
    manifest = read_manifest(result.artifact)
    assert manifest.artifact_kind == "unet"
    assert (result.artifact / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipe, _ = load_artifact_pipeline(result.artifact)
    assert np.abs(_render(pipe) - base_images).mean() > 1.0


@pytest.mark.parametrize("method", ["dreambooth-lora", "textual-inversion", "hypernetwork", "controlnet", "pivotal"])
def test_each_method_trains_on_two_workers_and_its_artifact_loads(method, tmp_path):
    photos = draw_images(tmp_path / "photos", count=4)
    config = method_config(
        method,
        photos,
        tmp_path / method,
        scaling__workers=2,
        training__steps=4,
        training__checkpoint_every=2,
        optimizer__learning_rate=1e-2,
        validation__final_grid=method != "hypernetwork",  # a run may end at its artifact
    )
    result = train(config)
    assert result.steps == 4
    manifest = read_manifest(result.artifact)
    assert manifest.method == method
    assert (result.artifact / "samples" / "final.png").is_file() == config.validation.final_grid
    pipe, _ = load_artifact_pipeline(result.artifact)
    extra = {"control_image": Image.new("RGB", (64, 64))} if method == "controlnet" else {}
    request = GenerationRequest([config.data.instance_prompt], steps=2, **extra)
    assert generate(pipe, request, 64)[0][0].size == (64, 64)
    mlflow = client(tracking_uri())
    assert mlflow.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert len(mlflow.get_metric_history(result.mlflow_run_id, "loss")) == 4


def test_a_local_ray_outlives_the_thread_that_started_it_grows_for_a_bigger_run_and_a_callers_is_refused(
    tmp_path, monkeypatch
):
    """Ray Train waits forever for cores a fixed local Ray cannot offer (a one-worker run first, then a
    two-worker one, hung CI for an hour), and Ray's processes die with the thread that started them
    (a run on a thread, then a minute later the whole process): a Ray started here lasts and grows;
    one the caller started is refused."""
    import threading
    import time

    import psutil
    import ray

    from dreamloom.training import local

    def head_processes() -> list[str]:
        return [p.name() for p in psutil.Process().children(recursive=True) if p.name().startswith("gcs_server")]

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setattr(local, "_ray_started_here", False)
    monkeypatch.setenv("DREAMLOOM_RAY_CPUS", "1")
    one_worker = run_config(tmp_path, tmp_path / "a", scaling__workers=1)
    two_workers = run_config(tmp_path, tmp_path / "b", scaling__workers=2)
    try:
        runner = threading.Thread(target=local.ensure_ray, args=(one_worker,))
        runner.start()
        runner.join()
        time.sleep(1.0)
        assert head_processes(), "Ray's GCS died with the thread that started it"
        assert ray.cluster_resources()["CPU"] == 1
        local.ensure_ray(two_workers)
        assert ray.cluster_resources()["CPU"] == 2
        ray.shutdown()
        monkeypatch.setattr(local, "_ray_started_here", False)
        ray.init(num_cpus=1, include_dashboard=False, _temp_dir=str(local.ray_temp_dir()))
        with pytest.raises(DreamloomError, match=r"offers 1 CPUs but the run needs 2 .*ray.init\(num_cpus=2\)"):
            local.ensure_ray(two_workers)
    finally:
        ray.shutdown()
