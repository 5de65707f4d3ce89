"""The registry against a real `mlflow server` on loopback (and once against a SQLite file)."""

import base64
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from PIL import Image

from dreamloom.artifacts import read_manifest
from dreamloom.cli import main
from dreamloom.errors import EXIT_INPUT, DreamloomError
from dreamloom.evaluation import evaluate_artifact
from dreamloom.methods import METHODS as registered_methods
from dreamloom.models import resolve_base_model
from dreamloom.registry import CHAMPION, Evaluation, GateConfig, promote, register, resolve, rollback
from dreamloom.registry.store import client, list_versions
from dreamloom.training.local import train_in_process
from tests.helpers import draw_images, method_config

pytestmark = pytest.mark.slow  # a real MLflow server, every method trained

METHODS = tuple(registered_methods)  # every method the registry knows registers and serves through its pyfunc
QUICK_EVAL = {"prompts": ("a {} on the beach", "a {} in the snow"), "images_per_prompt": 2, "steps": 2}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}", "--artifacts-destination",
               (root / "artifacts").as_uri()]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("w"))
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError as exc:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                log = (root / "server.log").read_text()[-2000:]
                raise AssertionError(f"mlflow server did not start: {log}") from exc
            time.sleep(0.5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry-artifacts")
    photos = draw_images(root / "photos", count=3)
    return {m: train_in_process(method_config(m, photos, root / m, training__steps=2)) for m in METHODS}


def _decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


@pytest.mark.parametrize("method", METHODS)
def test_every_artifact_type_registers_and_generates_through_its_pyfunc(method, artifacts, mlflow_server):
    version = register(artifacts[method], f"concept-{method}")
    tags = version.tags
    assert tags["dreamloom.method"] == method
    assert tags["dreamloom.base_model"] == "tiny" and tags["dreamloom.base_model_revision"].startswith("sha256:")
    assert tags["dreamloom.dataset_hash"].startswith("sha256:")
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/concept-{method}/{version.version}")
    request = {"prompt": ["a photo of <sks-ball>"], "steps": [2], "seed": [3]}
    if method == "controlnet":
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64)).save(buffer, format="PNG")
        request["control_image"] = [base64.b64encode(buffer.getvalue()).decode()]
    output = model.predict(pd.DataFrame(request))
    assert _decode(output["image"][0]).size == (64, 64) and output["seed"][0] == 3
    # The input example MLflow's UI and `mlflow models serve` users see: a request the model serves.
    local = mlflow.artifacts.download_artifacts(f"models:/concept-{method}/{version.version}")
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert example["prompt"][0] == read_manifest(artifacts[method]).instance_prompt and example["width"][0] == 64
    assert json.loads(Path(local, "serving_input_example.json").read_text())["dataframe_split"]["columns"]
    assert _decode(model.predict(example.assign(steps=2))["image"][0]).size == (64, 64)


def test_lineage_links_back_to_the_training_run(lora_run, mlflow_server):
    result, _, _ = lora_run
    version = register(result.artifact, "lineage")
    assert version.tags["dreamloom.training_run_id"] == result.mlflow_run_id
    assert version.tags["dreamloom.trigger_token"] == "sks"
    assert "sha256:" in version.tags["dreamloom.dataset_hash"]
    assert result.mlflow_run_id in version.description
    (row,) = list_versions("lineage")  # the listing reads the tags back as the manifest's typed lineage
    assert row.lineage == read_manifest(result.artifact).lineage() and row.method == "lora"


def test_evaluation_metrics_change_when_the_artifact_changes(artifacts, tmp_path, mlflow_server):
    photos = draw_images(tmp_path / "photos", count=3)
    brief = train_in_process(method_config("lora", photos, tmp_path / "brief", training__steps=1))
    longer = train_in_process(
        method_config("lora", photos, tmp_path / "longer", training__steps=6, optimizer__learning_rate=2e-2)
    )
    first, settings = evaluate_artifact(brief, **QUICK_EVAL)
    second, _ = evaluate_artifact(longer, **QUICK_EVAL)
    assert set(first.metrics) == {"clip_t", "clip_i", "dino", "diversity"}
    assert first.metrics != second.metrics
    assert first.encoders == {"clip": "tiny-clip (seeded, untrained)", "dino": "tiny-dino (seeded, untrained)"}
    assert settings.subject == "sks ball" and len(first.grids) == 2


def _evaluated(artifact: Path) -> Evaluation:
    result, _ = evaluate_artifact(artifact, **QUICK_EVAL)
    return Evaluation(result.metrics, (result.encoders["clip"], result.encoders["dino"]))


def test_gate_passes_refuses_is_forced_with_a_reason_and_rolls_back(artifacts, mlflow_server):
    lora = artifacts["lora"]
    first = register(lora, "gated", _evaluated(lora))
    second = register(lora, "gated", _evaluated(lora))
    assert promote("gated", first.version).moved
    strict = GateConfig(tolerance=-1.0)  # the challenger would have to beat the champion by 1.0
    refused = promote("gated", second.version, strict)
    assert not refused.moved and not refused.passed
    failures = [check.message for check in refused.checks if not check.passed]
    assert any("clip_i" in m and "below the champion's" in m for m in failures)
    assert resolve("gated@champion").version == first.version
    assert resolve("gated@challenger").version == second.version
    with pytest.raises(DreamloomError, match="--reason"):
        promote("gated", second.version, strict, force=True)
    forced = promote("gated", second.version, strict, force=True, reason="visual review passed")
    assert forced.moved and forced.forced
    champion = resolve(f"gated@{CHAMPION}")
    assert champion.version == second.version and champion.tags["dreamloom.forced_reason"] == "visual review passed"
    assert rollback("gated") == (second.version, first.version)
    assert resolve("gated@champion").version == first.version
    with pytest.raises(DreamloomError, match="no earlier champion"):
        rollback("gated")


def test_thresholds_and_encoder_mismatch_refuse(artifacts, mlflow_server):
    lora = artifacts["lora"]
    measured = _evaluated(lora)
    first = register(lora, "thresholds", measured)
    too_high = GateConfig(thresholds={"dino": measured.metrics["dino"] + 0.5})
    refused = promote("thresholds", first.version, too_high)
    assert not refused.moved
    assert any("below the threshold" in c.message for c in refused.checks if not c.passed)
    assert promote("thresholds", first.version).moved
    other = register(lora, "thresholds", Evaluation(measured.metrics, ("another-clip", "another-dino")))
    mismatch = promote("thresholds", other.version, GateConfig(tolerance=10))
    assert not mismatch.moved and "same encoders" in mismatch.checks[0].message


def test_concurrent_registrations_get_distinct_versions_and_leave_no_orphans(artifacts, mlflow_server):
    errors = []

    def one():
        try:
            register(artifacts["lora"], "crowd")
        except Exception as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    registry = client()
    versions = registry.search_model_versions("name = 'crowd'")
    assert sorted(int(v.version) for v in versions) == list(range(1, 11))
    assert all(v.tags.get("dreamloom.method") == "lora" and v.status == "READY" for v in versions)
    experiment = registry.get_experiment_by_name("dreamloom-registry")
    runs = registry.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'register-crowd'")
    assert len(runs) == 10 and {r.info.status for r in runs} == {"FINISHED"}


def _together(calls) -> list:
    """Run the calls at once from threads; returns each result or the exception it raised."""
    results: list = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except Exception as exc:  # collected for the caller to assert on
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results


def test_two_first_registrations_on_different_bases_leave_one_model_on_one_base(artifacts, tmp_path, mlflow_server):
    sdxl = train_in_process(
        method_config("lora", draw_images(tmp_path / "p"), tmp_path / "xl", base_model="tiny-sdxl", training__steps=1)
    )
    results = _together([lambda: register(artifacts["lora"], "raced"), lambda: register(sdxl, "raced")])
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, Exception)]
    assert len(won) == 1 and len(lost) == 1 and "holds versions for base" in str(lost[0])
    registry = client()
    model = registry.get_registered_model("raced")
    versions = registry.search_model_versions("name = 'raced'")
    assert len(versions) == 1 and versions[0].tags["dreamloom.base_model"] == model.tags["dreamloom.base_model"]
    experiment = registry.get_experiment_by_name("dreamloom-registry")
    runs = registry.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'register-raced'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the loser wrote nothing


def test_concurrent_forced_promotions_lose_no_record_of_the_champion_history(artifacts, mlflow_server):
    from dreamloom.registry.store import champion_history

    versions = [str(register(artifacts["lora"], "contested").version) for _ in range(5)]
    results = _together([lambda v=v: promote("contested", v, force=True, reason="load test") for v in versions])
    assert all(result.moved for result in results)
    history = champion_history("contested")
    assert sorted(record.version for record in history) == versions  # every promotion recorded
    champion = str(resolve("contested@champion").version)
    standing = [record.version for record in history]
    rolled = []
    while True:  # rolling back walks the recorded promotions, never one that lost its record
        try:
            rolled.append(rollback("contested"))
        except DreamloomError:
            break
    assert not rolled or rolled[0][0] == champion
    assert {to for _, to in rolled} <= set(standing) and len(rolled) == standing.index(champion)


def _pickle_bytes() -> bytes:
    import pickle

    return pickle.dumps({"weights": [1.0, 2.0]}, protocol=4)


def _altered(artifact: Path, folder: Path, how: str) -> Path:
    """A copy of a LoRA artifact altered as an attacker or a broken tool would, with its manifest's
    digests recomputed so that only a check of the content can tell."""
    import gzip
    import io
    import tarfile

    from safetensors.torch import load_file, save_file

    from dreamloom.artifacts import read_manifest, write_manifest

    shutil.copytree(artifact, folder)
    weights = folder / "pytorch_lora_weights.safetensors"
    if how == "tarred pickle":
        member = tarfile.TarInfo("archive/data.pkl")
        member.size = len(_pickle_bytes())
        with tarfile.open(folder / "model.pth.tar", "w") as archive:
            archive.addfile(member, io.BytesIO(_pickle_bytes()))
    elif how == "gzipped pickle":
        (folder / "weights.pkl.gz").write_bytes(gzip.compress(_pickle_bytes()))
    elif how == "pickle named safetensors":
        weights.write_bytes(_pickle_bytes())
    elif how == "weights dropped from the manifest":
        weights.unlink()
    elif how == "wrong shapes":
        tensors = load_file(str(weights))
        save_file(
            {k: v.T.contiguous() if ("lora_A" in k or "lora.down" in k) else v for k, v in tensors.items()},
            str(weights),
        )
    elif how == "nan weights":
        tensors = load_file(str(weights))
        save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(weights))
    elif how == "a lying base":  # says it was trained on tiny-sdxl (at that base's real revision)
        document = json.loads((folder / "dreamloom.json").read_text())
        document["base_model"] = dataclasses.asdict(resolve_base_model("tiny-sdxl"))
        (folder / "dreamloom.json").write_text(json.dumps(document))
    write_manifest(folder, read_manifest(folder, verify=False))
    if how == "unlisted file":
        shutil.copy(weights, folder / "extra.safetensors")  # added after the manifest was written
    return folder


ATTACKS = {
    "tarred pickle": r"model\.pth\.tar is a pickle \(by its content\)",
    "gzipped pickle": r"weights\.pkl\.gz is a pickle \(by its content\)",
    "pickle named safetensors": r"pytorch_lora_weights\.safetensors is a pickle \(by its content\)",
    "unlisted file": r"holds files its manifest does not list: extra\.safetensors",
    "weights dropped from the manifest": r"the lora artifact lacks pytorch_lora_weights\.safetensors",
    "wrong shapes": r"the lora artifact does not fit tiny: .*size mismatch",
    "nan weights": r"weights of the lora artifact are not finite",
    "a lying base": r"the lora artifact does not fit tiny-sdxl",
}


def test_bad_artifacts_are_refused_before_anything_is_written(artifacts, tmp_path, mlflow_server):
    registry = client()
    lora = artifacts["lora"]
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "pytorch_lora_weights.safetensors").write_bytes((lora / "pytorch_lora_weights.safetensors").read_bytes())
    with pytest.raises(DreamloomError, match=r"no dreamloom\.json"):
        register(bare, "refused")
    for how, refusal in ATTACKS.items():
        with pytest.raises(DreamloomError, match=refusal):
            register(_altered(lora, tmp_path / how.replace(" ", "-"), how), "refused")
    other_revision = tmp_path / "other-revision"
    shutil.copytree(lora, other_revision)
    manifest = json.loads((other_revision / "dreamloom.json").read_text())
    manifest["base_model"]["revision"] = "sha256:0000000000000000"
    (other_revision / "dreamloom.json").write_text(json.dumps(manifest))
    with pytest.raises(DreamloomError, match="revision sha256:0000000000000000"):
        register(other_revision, "refused")
    assert not registry.search_registered_models("name = 'refused'")
    register(lora, "one-base")
    sdxl = train_in_process(
        method_config("lora", draw_images(tmp_path / "p"), tmp_path / "xl", base_model="tiny-sdxl", training__steps=1)
    )
    with pytest.raises(DreamloomError, match="holds versions for base tiny"):
        register(sdxl, "one-base")
    assert len(registry.search_model_versions("name = 'one-base'")) == 1


def test_cli_register_evaluate_promote_list_rollback(artifacts, tmp_path, mlflow_server, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a {} on the beach\na {} in the snow\n")
    quick = ["--prompts-file", str(prompts), "--images-per-prompt", "2", "--eval-steps", "2"]
    lora = str(artifacts["lora"])
    assert main(["registry", "register", "--artifact", lora, "--name", "shoe", *quick]) == 0
    assert main(["registry", "register", "--artifact", lora, "--name", "shoe", *quick]) == 0
    out = capsys.readouterr().out
    assert "registered shoe version 2" in out and "clip_t" in out and "tiny-clip" in out
    # stages, and each prompt as it is scored: a long evaluation never looks hung
    assert "[register] 1/2 evaluating" in out and "[register] 2/2 registering shoe" in out
    assert f"[evaluate] {'█' * 20} 2/2 (100%)" in out
    version = resolve("shoe/2")
    logged = {entry.path for entry in client().list_artifacts(version.run_id, "samples")}
    assert logged == {"samples/prompt_00.png", "samples/prompt_01.png"}  # grids beside the version's metrics
    images = {entry.path for entry in client().list_artifacts(version.run_id, "images")}  # the image panel's
    assert {path.split("/")[1].split("+")[0] for path in images} == {"prompt_00", "prompt_01"}  # KEY+step+...
    assert float(version.tags["dreamloom.metric.clip_i"]) == pytest.approx(
        client().get_run(version.run_id).data.metrics["clip_i"]
    )
    logged_model = version.source.removeprefix("models:/")  # SQLite's registry keeps no model_id field
    linked = client().get_logged_model(logged_model).metrics  # shown on the logged model's page
    assert {"clip_t", "clip_i", "dino"} <= {metric.key for metric in linked}
    assert main(["registry", "promote", "shoe", "--version", "1"]) == 0
    gate = tmp_path / "gate.yaml"
    gate.write_text("tolerance: -1.0\n")
    assert main(["registry", "promote", "shoe", "--version", "2", "--gate", str(gate)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "champion stays v1" in out
    assert main(["evaluate", "--model", "shoe@champion", "--attach", "--out", str(tmp_path / "eval"), *quick]) == 0
    assert (tmp_path / "eval" / "prompt_01.png").is_file()
    assert (
        main(["registry", "promote", "shoe", "--version", "2", "--gate", str(gate), "--force", "--reason", "ok"]) == 0
    )
    assert main(["registry", "list", "shoe"]) == 0
    listing = capsys.readouterr().out
    assert "champion" in listing and "challenger" in listing and "lora" in listing
    assert main(["registry", "rollback", "shoe"]) == 0
    assert "from v2 to v1" in capsys.readouterr().out
    assert main(["registry", "register", "--artifact", str(tmp_path), "--name", "shoe", "--no-evaluate"]) == EXIT_INPUT


def test_the_registry_works_on_a_local_sqlite_file(artifacts, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DREAMLOOM_HOME", str(tmp_path / "home"))
    unevaluated = register(artifacts["hypernetwork"], "local")
    refused = promote("local", unevaluated.version)
    assert not refused.moved and "evaluate it first" in refused.checks[0].message
    version = register(artifacts["hypernetwork"], "local", _evaluated(artifacts["hypernetwork"]))
    assert promote("local", version.version).moved
    assert (tmp_path / "home" / "mlflow.db").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/local@champion")
    assert _decode(model.predict(pd.DataFrame({"prompt": ["a ball"], "steps": [2]}))["image"][0]).size == (64, 64)
