"""Deploying a registered model version to a running Triton without failing a request.

``deploy("shoe@champion", url)`` resolves the alias in MLflow, copies the artifact into the serving
store as an immutable folder, writes a new version of the Triton model whose routes include it,
and asks Triton (model-control API) to load the model: Triton keeps serving the old version until
the new one is ready, then retires it. The deploy is confirmed by generating one image through the
endpoint with the new version. If Triton cannot load it, the new version folder is removed and
the old version keeps serving. Deploying an earlier version is the rollback.

LoRA, textual inversion, pivotal, hypernetwork and ControlNet artifacts are adapters of the shared
base model; a DreamBooth artifact is its own Triton model, named after the registered model.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from dreamloom.artifacts import read_manifest
from dreamloom.errors import DreamloomError
from dreamloom.serving.protocol import ImageRequest
from dreamloom.serving.repository import DEFAULT_MODEL, ServingStore
from dreamloom.serving.routes import Routes


@dataclass
class DeployResult:
    name: str
    version: str
    triton_model: str
    triton_version: int
    adapter: str  # what requests pass as ADAPTER ("" for a DreamBooth model)
    seconds_to_ready: float
    seconds_to_first_image: float


def deploy(
    reference: str,
    url: str,
    version: str | None = None,
    store: ServingStore | None = None,
    model: str = DEFAULT_MODEL,
    protocol: str = "http",
    progress: bool = False,
) -> DeployResult:
    from dreamloom.registry.store import resolve
    from dreamloom.serving.client import ServingClient

    store = store or ServingStore()
    registered = resolve(reference, version)
    with ServingClient(url, protocol, model, admin_key=store.admin_key()) as client:
        return _deploy(registered, client, store, model, progress)


def _deploy(registered, client, store: ServingStore, model: str, progress: bool) -> DeployResult:
    from dreamloom.registry.store import download_artifact

    name, number = registered.name, str(registered.version)
    url = client.url
    if not client.ready(model):
        raise DreamloomError(f"Triton at {url} is not serving {model!r}; start it with `dreamloom serve`")
    artifact = download_artifact(registered)
    manifest = read_manifest(artifact)
    started = time.monotonic()
    if manifest.method_type.serves_as_model:
        folder = store.add_artifact(name, number, artifact)
        triton_model, routes, adapter = name, Routes(manifest.base_model.spec, dreambooth=str(folder)), ""
        store.write_config(name)
    else:
        served = store.latest_routes(model)
        _check_same_base(served, manifest, name, model)
        folder = store.add_artifact(name, number, artifact)
        routes = served.with_adapter(name, number, folder, _registry_aliases(name))
        triton_model, adapter = model, f"{name}/{number}"
    triton_version = store.add_version(triton_model, routes)
    try:
        client.load_model(triton_model)
        _wait_for_version(client, triton_model, triton_version, progress)
    except DreamloomError:
        store.remove_version(triton_model, triton_version)
        raise
    ready = time.monotonic() - started
    client.generate(_first_request(manifest.method_type.serving_mode, adapter), model=triton_model)
    return DeployResult(name, number, triton_model, triton_version, adapter, ready, time.monotonic() - started)


def _first_request(mode: str, adapter: str) -> ImageRequest:
    """The request that proves the new version answers, in the mode its method serves (a mode
    with image inputs gets blank ones: a ControlNet needs something to follow)."""
    from PIL import Image

    from dreamloom.serving.protocol import IMAGE_INPUTS, encode_image

    blank = encode_image(Image.new("RGB", (64, 64), "black"))
    images = {name: blank for name in IMAGE_INPUTS.get(mode, ())}
    return ImageRequest("a test image", adapter=adapter, steps=2, mode=mode, **images)


def _registry_aliases(name: str) -> dict[str, str]:
    from dreamloom.registry.store import client

    return {alias: str(version) for alias, version in client().get_registered_model(name).aliases.items()}


def _check_same_base(served: Routes, manifest, name: str, model: str) -> None:
    from dreamloom.models.base import resolve_base_model

    served_base = resolve_base_model(served.base_model)
    trained_on = manifest.base_model
    if served_base.revision and trained_on.revision:
        same = served_base.revision == trained_on.revision
    else:
        same = served_base.spec == trained_on.spec
    if not same:
        raise DreamloomError(
            f"{name} was trained on {trained_on.spec} but Triton model {model!r} serves "
            f"{served.base_model}; serve that base (dreamloom serve --base-model ...) or deploy to its model"
        )


def _wait_for_version(client, model: str, version: int, progress: bool, timeout_s: float = 600) -> None:
    started = time.monotonic()
    while version not in client.model_versions(model):
        if time.monotonic() - started > timeout_s:
            raise DreamloomError(f"Triton did not report {model} version {version} ready within {timeout_s:.0f} s")
        if progress:
            print(
                f"\r[dreamloom] waiting for {model} v{version}: {time.monotonic() - started:.0f} s",
                end="",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(0.1)
    if progress:
        print(file=sys.stderr)
