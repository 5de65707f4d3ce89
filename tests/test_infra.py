"""infra/: what can be checked without Docker or a cluster (the images build from files that
exist, the pinned versions agree wherever they are written, the script parses)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


def pins() -> dict[str, str]:
    lines = (INFRA / "install" / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.triton"])
def test_every_copied_path_exists_and_the_image_runs_as_the_charts_user(dockerfile):
    text = (INFRA / dockerfile).read_text()
    sources = [part for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M) for part in line.split()[:-1]]
    assert sources and all((ROOT / source).exists() for source in sources), sources
    assert re.search(r"^USER 1000$", text, re.M)  # charts/dreamloom podSecurity.runAsUser
    assert "requirements.lock" in sources


def test_the_triton_image_carries_the_model_repository_the_chart_seeds_from():
    assert "COPY serving/model_repository /opt/dreamloom/model_repository" in (INFRA / "Dockerfile.triton").read_text()
    chart = (ROOT / "charts" / "dreamloom" / "templates" / "triton.yaml").read_text()
    assert "cp -R /opt/dreamloom/model_repository /serving/models" in chart


def test_pinned_versions_agree_everywhere_they_are_written():
    versions = pins()
    kind = yaml.safe_load((INFRA / "kind" / "cluster.yaml").read_text())
    assert {node["image"] for node in kind["nodes"]} == {versions["KIND_NODE_IMAGE"]}
    operator = yaml.safe_load((INFRA / "install" / "kuberay-operator-values.yaml").read_text())
    assert operator["image"]["tag"] == f"v{versions['KUBERAY_OPERATOR_CHART_VERSION']}"
    kfp = yaml.safe_load((INFRA / "install" / "kfp" / "kustomization.yaml").read_text())
    assert [resource.rsplit("?ref=", 1)[1] for resource in kfp["resources"]] == [versions["KFP_VERSION"]]


def test_the_cluster_script_parses_and_installs_in_order():
    script = INFRA / "cluster-up.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    steps = re.findall(r'^echo "== (\w+)', script.read_text(), re.M)
    assert steps == ["kind", "KubeRay", "Kubeflow", "images", "secrets", "dreamloom", "done"]
