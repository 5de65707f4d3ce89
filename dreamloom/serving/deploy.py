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

from dreamloom.errors import DreamloomError, Refused
from dreamloom.serving.protocol import check_picture, probe_request
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
    restore_champion: bool = False,
) -> DeployResult:
    """Serve ``reference``; any failure leaves Triton serving what it served before. With
    ``restore_champion`` (the pipeline, which promotes before it deploys), a failed deploy of
    ``NAME@champion`` also moves the registry's champion back, so that the registry and Triton agree."""
    from dreamloom.registry.store import resolve
    from dreamloom.serving.client import ServingClient

    store = store or ServingStore()
    registered = resolve(reference, version)
    with ServingClient(url, protocol, model, admin_key=store.admin_key()) as client:
        try:
            return _deploy(registered, client, store, model, progress)
        except DreamloomError as failure:
            if restore_champion and reference.endswith("@champion"):
                raise DreamloomError(f"{failure} {_restore_champion(registered)}") from None
            raise


def _restore_champion(failed) -> str:
    from dreamloom.registry import rollback
    from dreamloom.registry.store import resolve

    if str(resolve(f"{failed.name}@champion").version) != str(failed.version):
        return "The registry's champion has moved since; it was left alone."
    try:
        _, previous = rollback(failed.name)
    except DreamloomError:
        return f"{failed.name} has no earlier champion: the registry still names v{failed.version}."
    return f"The registry's champion was moved back to v{previous}."


def _deploy(registered, client, store: ServingStore, model: str, progress: bool) -> DeployResult:
    from dreamloom.registry.integrity import check_artifact
    from dreamloom.registry.store import download_artifact

    name, number = registered.name, str(registered.version)
    url = client.url
    if not client.ready(model):
        raise DreamloomError(f"Triton at {url} is not serving {model!r}; start it with `dreamloom serve`")
    try:  # the store's copy is checked again: it may have changed since it was registered
        artifact = download_artifact(registered)
        manifest = check_artifact(artifact)
    except DreamloomError as refused:
        raise DreamloomError(
            f"deploy of {name} v{number} failed; Triton serves what it served before. Cause: {refused}"
        ) from None
    method = manifest.method_type
    started = time.monotonic()
    if method.serves_as_model:
        new_model = not store.versions(name)
        folder = store.add_artifact(name, number, artifact)
        triton_model, routes, adapter = name, Routes(manifest.base_model.spec, dreambooth=str(folder)), ""
        store.write_config(name)
    else:
        new_model = False
        served = store.latest_routes(model)
        _check_same_base(served, manifest, name, model)
        folder = store.add_artifact(name, number, artifact)
        routes = served.with_adapter(name, number, folder, _registry_aliases(name), method.serving_mode)
        triton_model, adapter = model, f"{name}/{number}"
    triton_version = store.add_version(triton_model, routes)
    try:
        # The new version renders through the adapter before Triton marks it ready (Engine.verify):
        # a version that cannot answer fails its load here, and the old one never stops serving.
        client.load_model(triton_model)
        _wait_for_version(client, triton_model, triton_version, progress)
        ready = time.monotonic() - started
        first = client.generate(probe_request(method.serving_mode, adapter), model=triton_model)
        check_picture(first, f"{name} v{number} on Triton")
    except DreamloomError as failure:
        _roll_back(client, store, triton_model, triton_version, new_model)
        raise Refused(
            f"deploy of {name} v{number} failed; Triton serves what it served before. Cause: {failure}"
        ) from None
    return DeployResult(name, number, triton_model, triton_version, adapter, ready, time.monotonic() - started)


def _roll_back(client, store: ServingStore, model: str, version: int, new_model: bool) -> None:
    """Take the failed version away: its folder, and Triton's copy if it loaded. The routes are
    then exactly the previous version's (versions only ever get added, so that one is untouched)."""
    store.remove_version(model, version)
    try:
        if new_model:
            client.unload_model(model)
            store.remove_model(model)
        else:
            client.load_model(model)  # Triton goes back to the newest version left: the previous one
    except DreamloomError as exc:
        print(f"[dreamloom] warning: rolling back {model} v{version} on Triton: {exc}", file=sys.stderr)


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
    from dreamloom.progress import StatusLine

    started, status = time.monotonic(), StatusLine()
    try:
        while version not in client.model_versions(model):
            if time.monotonic() - started > timeout_s:
                raise DreamloomError(f"Triton did not report {model} version {version} ready within {timeout_s:.0f} s")
            if progress:
                status.show(f"[dreamloom] waiting for {model} v{version}: {time.monotonic() - started:.0f} s")
            time.sleep(0.1)
    finally:
        status.close()
