"""The Kubeflow components and the personalize pipeline: compiled IR, components called directly,
and whole runs with KFP's local runner (a real local Ray, MLflow on SQLite, a real tritonserver)."""

from __future__ import annotations

import builtins
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from kfp.dsl import Dataset

from components import gate, prepare_data
from dreamloom.errors import EXIT_INPUT, DreamloomError
from pipelines import compile_pipeline
from pipelines.personalize import COMPILED
from tests.helpers import draw_images


@contextmanager
def stops_with(capsys, pattern: str, code: int = EXIT_INPUT):
    """A step ending on a refusal: the refusal's exit code, its message on stderr, no traceback."""
    with pytest.raises(SystemExit) as stopped:
        yield
    assert stopped.value.code == code
    err = capsys.readouterr().err
    assert re.search(pattern, err) and "Traceback" not in err, err


SIDE_EFFECT_TASKS = ("train", "evaluate", "register", "gate", "promote", "deploy")


def _run_config(photos: Path) -> dict:
    return {
        "method": "lora",
        "base_model": "tiny",
        "data": {"path": str(photos), "instance_prompt": "a photo of sks ball", "resolution": 64},
        "training": {"steps": 4, "batch_size": 2, "checkpoint_every": 0},
        "validation": {"steps": 2, "images_per_prompt": 1},
    }


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = compile_pipeline("personalize", tmp_path_factory.mktemp("compiled") / "personalize.yaml")
    return {"text": path.read_text(), "documents": list(yaml.safe_load_all(path.read_text()))}


def test_the_checked_in_pipeline_yaml_is_what_the_code_compiles(compiled, tmp_path):
    from pipelines import NAMES, compile_all

    fresh = compile_all(tmp_path)
    assert [path.name for path in fresh] == [f"{name}.yaml" for name in NAMES]
    for path in fresh:
        checked_in = Path("pipelines") / path.name
        assert checked_in.read_text() == path.read_text(), f"{checked_in} is stale: run dreamloom pipeline compile"
    assert COMPILED.read_text() == compiled["text"], (
        "pipelines/personalize.yaml is stale: run dreamloom pipeline compile"
    )


def test_the_pipeline_is_kfp_ir_2_1_with_the_steps_in_order(compiled):
    spec = compiled["documents"][0]
    assert spec["schemaVersion"] == "2.1.0" and spec["pipelineInfo"]["name"] == "dreamloom-personalize"
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["train"]["dependentTasks"] == ["prepare-data"]
    # train reads prepare-data's Dataset artifact (lineage and caching follow it), not a hash
    dataset = tasks["train"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]
    assert dataset == {"outputArtifactKey": "dataset", "producerTask": "prepare-data"}
    assert tasks["register"]["dependentTasks"] == ["evaluate", "train"]
    condition = tasks["condition-1"]["triggerPolicy"]["condition"]
    assert "gate" in condition and "true" in condition
    assert set(spec["root"]["inputDefinitions"]["parameters"]) >= {"config", "model_name", "gate_config", "triton_url"}


def test_side_effect_steps_are_not_cached_and_kfp_retries_nothing(compiled):
    """KFP would retry a user's error as readily as a service's hiccup; steps retry the transient
    failures themselves (dreamloom/steps.py)."""
    spec = compiled["documents"][0]
    tasks = dict(spec["root"]["dag"]["tasks"])
    for condition in ("condition-1", "condition-2"):
        tasks |= spec["components"][f"comp-{condition}"]["dag"]["tasks"]
    for name in SIDE_EFFECT_TASKS:
        assert tasks[name]["cachingOptions"] == {}, name  # enableCache absent: off
    assert not [name for name, task in tasks.items() if "retryPolicy" in task]
    assert tasks["prepare-data"]["cachingOptions"] == {"enableCache": True}


def test_every_components_imports_work_where_kfp_runs_them():
    """KFP runs a component's function source with ``_KFP_RUNTIME=true``, where ``kfp.dsl`` has no
    ``component`` decorator: an import inside a component that reaches ``components/__init__.py``
    (which decorates) fails there, though it works in a test that calls ``python_func``."""
    import ast
    import inspect
    import subprocess
    import sys

    import components

    imports = set()
    for name in components.__all__:
        tree = ast.parse(inspect.getsource(getattr(components, name).python_func))
        imports |= {ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)}
    assert any("dreamloom.steps" in line for line in imports)
    script = "import kfp.dsl\nassert not hasattr(kfp.dsl, 'component')\n" + "\n".join(sorted(imports))
    env = os.environ | {"_KFP_RUNTIME": "true"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_a_step_retries_transient_failures_and_stops_at_once_on_a_refusal(capsys):
    from mlflow.exceptions import MlflowException

    from dreamloom.serving.client import ServingError
    from dreamloom.steps import run_step

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("MLflow is not answering")
        if len(calls) == 2:
            raise ServingError("Triton is loading", status="503")
        if len(calls) == 3:
            raise MlflowException("overloaded", error_code="TEMPORARILY_UNAVAILABLE")
        return "done"

    assert run_step(flaky, first_wait_s=0) == "done" and len(calls) == 4
    refusals = []

    def refused():
        refusals.append(1)
        raise DreamloomError("evaluation needs at least 2 images per prompt")

    with stops_with(capsys, "dreamloom: error: evaluation needs at least 2 images per prompt"):
        run_step(refused, first_wait_s=0)
    assert len(refusals) == 1  # never retried

    def bad_request():
        raise ServingError("prompt is empty; send the text to draw", status="400")

    with stops_with(capsys, "dreamloom: error: prompt is empty"):
        run_step(bad_request, first_wait_s=0)  # a 400 is a refusal, however it arrives


def test_training_asks_for_gpus_set_at_submission_and_mounts_the_shared_volume(compiled):
    spec, platform = compiled["documents"]
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--train_gpus']}}"
    assert spec["root"]["inputDefinitions"]["parameters"]["train_gpus"]["defaultValue"] == 1
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in train["tolerations"]
    assert [(m["constant"], m["mountPath"]) for m in train["pvcMount"]] == [("dreamloom-data", "/data")]
    (settings,) = train["configMapAsEnv"]  # the chart's RayJob settings, for the kuberay launcher
    assert settings["configMapName"] == "dreamloom-training" and settings["optional"] is True
    assert settings["keyToEnv"] == [{"configMapKey": "rayjob-settings.json", "envVar": "DREAMLOOM_RAYJOB_SETTINGS"}]
    deploy = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-deploy"]
    assert [(m["constant"], m["mountPath"]) for m in deploy["pvcMount"]] == [("dreamloom-serving", "/serving")]


def test_a_pipeline_compiled_for_a_release_mounts_that_releases_objects(tmp_path, capsys):
    """`dreamloom pipeline compile --release brand-a`: the claims and settings of brand-a's chart
    objects (tests/test_chart.py checks the chart creates these names), under its own KFP name."""
    from dreamloom.cli import main
    from dreamloom.k8s.names import ReleaseNames

    assert main(["pipeline", "compile", "--release", "brand-a", "--out", str(tmp_path)]) == 0
    spec, platform = yaml.safe_load_all((tmp_path / "personalize.yaml").read_text())
    release = ReleaseNames("brand-a-dreamloom")
    assert spec["pipelineInfo"]["name"] == "brand-a-dreamloom-personalize"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert [m["constant"] for m in executors["exec-train"]["pvcMount"]] == [release.data_claim]
    assert executors["exec-train"]["configMapAsEnv"][0]["configMapName"] == release.training_settings
    assert [m["constant"] for m in executors["exec-deploy"]["pvcMount"]] == [release.serving_claim]
    augment = yaml.safe_load_all((tmp_path / "augment.yaml").read_text())
    assert "brand-a-dreamloom-data" in json.dumps(list(augment)) and "brand-a" not in COMPILED.read_text()
    checked_in = {path.name: path.read_text() for path in Path("pipelines").glob("*.yaml")}
    assert main(["pipeline", "compile", "--fullname", "brand-a-dreamloom"]) == EXIT_INPUT  # would overwrite them
    assert "pass --out FOLDER" in capsys.readouterr().err
    assert {path.name: path.read_text() for path in Path("pipelines").glob("*.yaml")} == checked_in


def test_remote_launchers_free_the_train_step_of_gpus(tmp_path):
    from pipelines.runner import pipeline_arguments

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": "lora", "data": {"path": str(tmp_path), "instance_prompt": "a sks"}}))
    assert pipeline_arguments(config, "m", launcher="kuberay")["train_gpus"] == 0
    assert "train_gpus" not in pipeline_arguments(config, "m", launcher="local")
    assert pipeline_arguments(config, "m", launcher="ray", train_gpus=2)["train_gpus"] == 2
    with pytest.raises(DreamloomError, match="unknown launcher 'slurm'"):
        pipeline_arguments(config, "m", launcher="slurm")


def test_credentials_come_from_secrets_and_never_from_parameters(compiled):
    spec, platform = compiled["documents"]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in SIDE_EFFECT_TASKS:
        secrets = {s["secretName"]: s for s in executors[f"exec-{name}"]["secretAsEnv"]}
        env = {entry["envVar"] for entry in secrets["dreamloom-mlflow"]["keyToEnv"]}
        assert "MLFLOW_TRACKING_URI" in env
        assert "AWS_SECRET_ACCESS_KEY" in {e["envVar"] for e in secrets["dreamloom-object-store"]["keyToEnv"]}
    parameters = json.dumps(spec["root"]["inputDefinitions"]).lower()
    assert "password" not in parameters and "secret" not in parameters


def test_components_run_in_the_dreamloom_image(compiled):
    spec = compiled["documents"][0]
    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"].startswith("ghcr.io/dreamloom/dreamloom:")
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_components_are_pinned_by_digest_when_compiled_for_a_pushed_image(tmp_path):
    """The images are chosen when the components are defined: compiled in a process of its own."""
    import subprocess
    import sys

    digest = "sha256:" + "b" * 64
    env = {key: value for key, value in os.environ.items() if key != "DREAMLOOM_IMAGE"}
    command = [sys.executable, "-c", "import sys; from dreamloom.cli import main; sys.exit(main(sys.argv[1:]))"]
    command += ["pipeline", "compile", "--out", str(tmp_path)]
    done = subprocess.run([*command, "--image-digest", digest], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"ghcr.io/dreamloom/dreamloom@{digest}" in done.stdout
    spec = next(yaml.safe_load_all((tmp_path / "personalize.yaml").read_text()))
    images = {executor["container"]["image"] for executor in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"ghcr.io/dreamloom/dreamloom@{digest}"}
    refused = subprocess.run([*command, "--image-digest", "latest"], env=env, capture_output=True, text=True)
    assert refused.returncode == EXIT_INPUT and "a digest is sha256: and 64 hex digits" in refused.stderr


# ----- components called directly -----


def test_prepare_data_refuses_bad_images_before_any_compute(tmp_path, capsys):
    photos = draw_images(tmp_path / "photos", count=3)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = Dataset(uri=str(tmp_path / "out" / "dataset"))
    with stops_with(capsys, r"(?s)dreamloom: error: .*broken\.png"):  # a message, no traceback
        prepare_data.python_func(config=_run_config(photos), dataset=dataset)
    assert not Path(dataset.path).exists()


def test_prepare_data_refuses_an_output_chosen_by_the_user(tmp_path, capsys):
    config = {**_run_config(draw_images(tmp_path / "photos")), "output": "somewhere"}
    with stops_with(capsys, "remove `output`"):
        prepare_data.python_func(config=config, dataset=Dataset(uri=str(tmp_path / "dataset")))


def test_every_component_documents_its_parameters_for_the_ui():
    """KFP reads Google-style docstrings into the IR's descriptions, which its UI shows."""
    from kfp.dsl.base_component import BaseComponent

    import components

    for name in components.__all__:
        component = getattr(components, name)
        assert isinstance(component, BaseComponent)
        spec = component.pipeline_spec.components[f"comp-{component.name}"]
        inputs = {**spec.input_definitions.parameters, **spec.input_definitions.artifacts}
        outputs = {**spec.output_definitions.parameters, **spec.output_definitions.artifacts}
        undocumented = [key for key, value in {**inputs, **outputs}.items() if not value.description]
        assert not undocumented, f"{name}: no description for {undocumented}"


def test_every_pipeline_documents_the_parameters_users_submit(tmp_path):
    from pipelines import NAMES

    for name in NAMES:
        spec = next(yaml.safe_load_all(compile_pipeline(name, tmp_path / f"{name}.yaml").read_text()))
        parameters = spec["root"]["inputDefinitions"]["parameters"]
        assert not [key for key, value in parameters.items() if not value.get("description")], name


def test_prepare_data_writes_the_prepared_set_that_training_reads_as_it_is(tmp_path):
    from dreamloom.config import pipeline_run_config
    from dreamloom.data.prepare import PreparedDataset, dataset_hash
    from dreamloom.evaluation.evaluate import reference_images
    from dreamloom.settings import work_dir
    from dreamloom.training.job import training_data

    photos = draw_images(tmp_path / "photos")
    dataset = Dataset(uri=str(tmp_path / "out" / "dataset"))
    prepared = prepare_data.python_func(config=_run_config(photos), dataset=dataset)
    assert prepared.images == 4 and prepared.dataset_hash == dataset_hash(photos)
    assert dataset.metadata == {"images": 4, "dataset_hash": prepared.dataset_hash}
    on_disk = PreparedDataset.load(Path(dataset.path))
    assert len(on_disk.items) == 4 and on_disk.dataset_hash == prepared.dataset_hash
    # evaluate reads the same artifact as its reference images (the subject's real pictures)
    assert [image.size for image in reference_images(Path(dataset.path))] == [(64, 64)] * 4

    # The train step's config points at the artifact: the set is read, not prepared again.
    cache = work_dir() / "datasets"
    cached_before = sorted(cache.iterdir()) if cache.is_dir() else []
    run = pipeline_run_config(_run_config(photos), output=str(tmp_path / "model"), prepared_data=dataset.path)
    assert training_data(run).root == Path(dataset.path)
    assert (sorted(cache.iterdir()) if cache.is_dir() else []) == cached_before
    other = {**_run_config(photos), "data": {**_run_config(photos)["data"], "resolution": 32}}
    with pytest.raises(DreamloomError, match="prepared with"):
        training_data(pipeline_run_config(other, output=str(tmp_path / "m2"), prepared_data=dataset.path))


def test_the_gate_component_judges_without_moving_the_champion(tmp_path, capsys):
    from dreamloom.registry import Evaluation, register, resolve
    from dreamloom.training.local import train_in_process
    from tests.helpers import run_config

    artifact = train_in_process(run_config(draw_images(tmp_path / "photos"), tmp_path / "lora", training__steps=1))
    evaluation = Evaluation({"clip_t": 0.3, "clip_i": 0.5, "dino": 0.4}, ("tiny-clip", "tiny-dino"))
    version = str(register(artifact, "gated", evaluation).version)
    assert gate.python_func(name="gated", version=version, gate_config={}) is True
    assert gate.python_func(name="gated", version=version, gate_config={"thresholds": {"dino": 0.9}}) is False
    assert str(resolve("gated@challenger").version) == version
    with pytest.raises(DreamloomError):
        resolve("gated@champion")
    with stops_with(capsys, "gate config"):
        gate.python_func(name="gated", version=version, gate_config={"thresholds": "high"})


# ----- whole runs with KFP's local runner -----


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    from dreamloom.serving.repository import ServingStore
    from dreamloom.serving.server import TritonServer, free_port

    store = ServingStore(tmp_path_factory.mktemp("pipeline-serving") / "store")
    store.ensure_model("dreamloom", "tiny")
    server = TritonServer.for_store(store, ["dreamloom"], free_port(), free_port(), free_port())
    server.start(timeout_s=300)
    yield server, store
    server.stop()


def _arguments(tmp_path: Path, name: str, **extra) -> dict:
    from pipelines.runner import pipeline_arguments

    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(_run_config(draw_images(tmp_path / "photos", count=4, captions=True))))
    return pipeline_arguments(config_file, name, eval_steps=2, eval_images_per_prompt=2, **extra)


@pytest.mark.slow
def test_the_pipeline_runs_locally_end_to_end_and_deploys_when_the_gate_passes(tmp_path, triton):
    from dreamloom.registry import resolve
    from dreamloom.serving.client import ServingClient
    from dreamloom.serving.protocol import ImageRequest
    from pipelines.runner import run_local

    server, store = triton
    arguments = _arguments(tmp_path, "ball", triton_url=server.http_url, serving_store=str(store.root))
    root = run_local(arguments, tmp_path / "kfp")
    assert str(resolve("ball@champion").version) == "1"
    assert store.latest_routes("dreamloom").resolve("ball@champion")[0] == "ball/1"
    with ServingClient(server.http_url) as client:
        image = client.generate(ImageRequest("a photo of sks ball", adapter="ball@champion", steps=2))
    assert image.shape == (64, 64, 3)
    samples = next(root.rglob("evaluate/samples"))
    assert samples.read_text().count('src="data:image/png;base64,') >= 2
    metrics = json.loads(next(root.rglob("evaluate/executor_output.json")).read_text())
    assert {"clip_t", "clip_i", "dino"} <= set(json.dumps(metrics).replace('"', " ").split())


@pytest.mark.slow
def test_a_refusing_gate_stops_the_pipeline_before_promotion_and_deploy(tmp_path, triton, capsys):
    """Through the CLI, as a user runs it: one line per step, KFP's executor dumps only in the run's
    log, and a last line naming the registered version and where to look."""
    from dreamloom.cli import main
    from dreamloom.registry import resolve

    server, store = triton
    before = store.versions("dreamloom")
    _arguments(tmp_path, "refused")  # writes run.yaml
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump({"thresholds": {"dino": 5.0}}))
    callers = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "DREAMLOOM_HOME")}
    command = ["pipeline", "run", "--local", str(tmp_path / "run.yaml"), "--model-name", "refused"]
    options = ["--gate", str(tmp_path / "gate.yaml"), "--eval-steps", "2", "--eval-images-per-prompt", "2"]
    serving = ["--triton-url", server.http_url, "--serving-store", str(store.root)]
    own_print = builtins.print
    assert main([*command, *options, *serving]) == 0
    assert builtins.print is own_print  # KFP's runner swaps in an indenting print per step
    assert {name: os.environ.get(name) for name in callers} == callers  # the steps saw them; the caller keeps its own
    assert str(resolve("refused@challenger").version) == "1"
    with pytest.raises(DreamloomError):
        resolve("refused@champion")
    assert store.versions("dreamloom") == before
    out = capsys.readouterr().out
    assert "executor_input" not in out and "[pipeline] train: success" in out and "[pipeline] gate: success" in out
    lines = out.splitlines()
    assert any(line.startswith("[pipeline] train: success (") for line in lines)
    assert any(re.match(r"  (\(.*\) )?\[train\] ", line) for line in lines)  # the training progress, indented once
    assert "registered refused v1 (challenger)" in out.splitlines()[-3]
    root = Path(out.split("outputs  ")[1].split()[0])
    assert not list(root.rglob("promote")) and not list(root.rglob("deploy"))
    assert "Got executor_input" in (root / "run.log").read_text()


def test_bad_pipeline_arguments_are_refused_before_anything_runs(tmp_path):
    from pipelines.runner import pipeline_arguments

    with pytest.raises(DreamloomError, match="does not exist"):
        pipeline_arguments(tmp_path / "missing.yaml", "x")
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({**_run_config(tmp_path), "method": "magic"}))
    with pytest.raises(DreamloomError, match="method"):
        pipeline_arguments(config_file, "x")
    config_file.write_text(yaml.safe_dump(_run_config(tmp_path)))
    with pytest.raises(DreamloomError, match="gate config"):
        pipeline_arguments(config_file, "x", gate_config={"tolerance": "lots"})
    # What the evaluate, register and deploy steps would refuse after training, refused now.
    with pytest.raises(DreamloomError, match="at least 2 images per prompt"):
        pipeline_arguments(config_file, "x", eval_images_per_prompt=1)
    with pytest.raises(DreamloomError, match="evaluation steps must be between 1 and 200"):
        pipeline_arguments(config_file, "x", eval_steps=0)
    with pytest.raises(DreamloomError, match="model name 'my model'"):
        pipeline_arguments(config_file, "my model")
    with pytest.raises(DreamloomError, match="is not HOST:PORT"):
        pipeline_arguments(config_file, "x", triton_url="triton")
    assert pipeline_arguments(config_file, "x", triton_url="dreamloom-triton:8000")["triton_url"]


def _documents(name: str) -> list[dict]:
    from importlib import import_module

    path = import_module(f"pipelines.{name}").COMPILED
    return list(yaml.safe_load_all(path.read_text()))


def test_the_augment_pipeline_teaches_classes_in_parallel_then_compares():
    spec, platform = _documents("augment")
    assert spec["schemaVersion"] == "2.1.0"
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"check-classes", "for-loop-1", "synthesize-and-compare"}
    assert root["for-loop-1"]["iteratorPolicy"] == {"parallelismLimit": 4}
    assert root["synthesize-and-compare"]["dependentTasks"] == ["for-loop-1"]
    loop = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert loop["teach-class"]["cachingOptions"] == {}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in executors["exec-teach-class"][
        "tolerations"
    ]
    assert [m["mountPath"] for m in executors["exec-synthesize-and-compare"]["pvcMount"]] == ["/serving"]


def test_the_batch_ads_pipeline_renders_each_product_in_parallel():
    spec, platform = _documents("batch_ads")
    (loop,) = spec["root"]["dag"]["tasks"].values()
    assert loop["iteratorPolicy"] == {"parallelismLimit": 4}
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--products"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "secretAsEnv" in executors["exec-render-ads"]
