"""Credentials stay where they belong: never printed, never copied into a job's environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dreamloom.errors import EXIT_INPUT
from dreamloom.settings import redacted, without_credentials
from tests.helpers import draw_images, run_config

URI = "https://ci-bot:hunter2-s3cret@mlflow.example:5000/path?x=1"


def test_tracking_uris_are_redacted_for_printing_and_stripped_for_jobs():
    assert redacted(URI) == "https://***@mlflow.example:5000/path?x=1"
    assert without_credentials(URI) == "https://mlflow.example:5000/path?x=1"
    assert redacted("sqlite:////home/me/.dreamloom/mlflow.db") == "sqlite:////home/me/.dreamloom/mlflow.db"


def test_a_ray_job_carries_no_credential_of_the_submitter(tmp_path, monkeypatch):
    from dreamloom.training.ray_jobs import job_environment

    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-s3cret")
    environment = job_environment(run_config(draw_images(tmp_path / "photos"), tmp_path / "out"), resume=False)
    assert environment["MLFLOW_TRACKING_URI"] == "https://mlflow.example:5000/path?x=1"
    assert "hunter2" not in str(environment)


def _auth_config_as_the_chart_writes_it(values: dict[str, str]) -> str:
    """The auth.ini of the chart's MLflow container, its ${VARIABLES} filled as its shell would."""
    from dreamloom.k8s.manifests import load_documents
    from tools.chart_lint import render

    documents = load_documents(render([], ["postgresql.enabled=true"]))
    (mlflow,) = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-mlflow")]
    script = mlflow["spec"]["template"]["spec"]["containers"][0]["args"][0]
    template = script.split("<<EOF\n", 1)[1].split("\nEOF", 1)[0]
    for name, value in values.items():
        template = template.replace("${" + name + "}", value)
    return template + "\n"


@pytest.mark.slow
def test_an_mlflow_behind_the_charts_auth_refuses_anonymous_callers_and_serves_dreamloom(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from dreamloom.cli import main
    from dreamloom.registry import register
    from dreamloom.training.local import train_in_process

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "auth.ini"
    config.write_text(
        _auth_config_as_the_chart_writes_it(
            {
                "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'auth.db'}",
                "MLFLOW_ADMIN_USERNAME": "admin",
                "MLFLOW_ADMIN_PASSWORD": "a-long-admin-Passw0rd",
            }
        )
    )
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-key",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--app-name", "basic-auth", "--host",
               "127.0.0.1", "--port", str(port), "--workers", "1", "--backend-store-uri", store,
               "--artifacts-destination", (tmp_path / "artifacts").as_uri()]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "log").open("w"))
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "log").read_text()[-2000:]
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/registered-models/search", timeout=10)
        assert anonymous.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        assert main(["registry", "list"]) == EXIT_INPUT  # a message naming the fix, not a traceback
        # What the pipeline's pods get from the dreamloom-mlflow Secret:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "a-long-admin-Passw0rd")
        artifact = train_in_process(run_config(draw_images(tmp_path / "photos"), tmp_path / "lora", training__steps=1))
        assert register(artifact, "behind-auth").version == "1"
    finally:
        server.terminate()
        server.wait(timeout=30)
