"""The ``kuberay`` launcher: train a run as a RayJob in the namespace this process runs in.

The data is staged on the shared volume (the ``dreamloom-data`` claim, mounted by the pipeline's
train step and by every Ray pod), the RayJob is rendered and checked against KubeRay's CRD, created,
and watched until KubeRay says it is complete; the submitter's log is printed as it grows. The
artifact is collected from the MLflow run the job reports, like the ``ray`` launcher does.

Talking to the API server is ``KubernetesCluster``, kept to four calls; everything else works on
plain dicts and is tested without a cluster.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from dreamloom.config import RunConfig
from dreamloom.errors import DreamloomError
from dreamloom.k8s.rayjob import API_VERSION, RayJobSettings, job_name, render_rayjob, settings_from_environment
from dreamloom.training.launcher import TrainResult
from dreamloom.training.remote import (
    LogFollower,
    check_before_submitting,
    failure_summary,
    remote_config,
    result_from_logs,
    stage_data,
)

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "rayjobs"
# jobDeploymentStatus values after which KubeRay does nothing more with the job.
FINISHED = ("Complete", "Failed", "ValidationFailed")


class Cluster(Protocol):
    def create(self, document: dict) -> None: ...
    def status(self, namespace: str, name: str) -> dict: ...
    def logs(self, namespace: str, name: str) -> str: ...
    def delete(self, namespace: str, name: str) -> None: ...


def train_on_kuberay(
    config: RunConfig, resume: bool = False, cluster: Cluster | None = None, settings: RayJobSettings | None = None,
    poll_s: float = 10.0,
) -> TrainResult:  # fmt: skip
    """Train ``config`` as a RayJob; retries of the job resume from its checkpoints on their own,
    so ``resume`` only matters for a job started again by hand (state is found and continued)."""
    settings = settings or settings_from_environment()
    check_before_submitting(config)
    name = job_name(config)
    folder = Path(settings.data_mount) / "dreamloom" / "jobs" / name
    if folder.exists() and not resume:
        raise DreamloomError(
            f"{folder} already holds the data of a job named {name}: is it still running? Delete the RayJob "
            "and that folder, pass --resume to start it again from its checkpoints, or choose another run name"
        )
    shutil.rmtree(folder, ignore_errors=True)
    document = _staged_rayjob(config, settings, folder)
    cluster = cluster or KubernetesCluster()
    cluster.create(document)
    namespace = settings.namespace
    print(f"[dreamloom] created RayJob {namespace}/{name} ({config.scaling.workers} workers)", flush=True)
    try:
        status = wait_for_rayjob(cluster, namespace, name, poll_s)
        logs = cluster.logs(namespace, name)
        if status.get("jobStatus") != "SUCCEEDED":
            reason = status.get("reason") or status.get("jobDeploymentStatus")
            detail = status.get("message") or failure_summary(logs)
            raise DreamloomError(f"RayJob {namespace}/{name} failed ({reason}): {detail}")
        return result_from_logs(config, logs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _staged_rayjob(config: RunConfig, settings: RayJobSettings, folder: Path) -> dict:
    """Stage the images on the shared volume and render the job that reads them there; nothing is
    left on the volume if the job cannot be rendered."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        staged = stage_data(config, folder)
        return render_rayjob(remote_config(config, staged, folder / "artifact"), settings)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def wait_for_rayjob(cluster: Cluster, namespace: str, name: str, poll_s: float = 10.0) -> dict:
    """Poll the RayJob until KubeRay is done with it, printing state changes and new log lines.
    No deadline here: the RayJob carries activeDeadlineSeconds and KubeRay enforces it."""
    follower, shown = LogFollower(), None
    try:
        while True:
            status = cluster.status(namespace, name)
            state = (status.get("jobDeploymentStatus") or "New", status.get("jobStatus") or "-")
            if state != shown:
                print(f"[dreamloom] RayJob {namespace}/{name}: {state[0]} (job {state[1]})", flush=True)
                shown = state
            if state[0] in ("Running", *FINISHED):
                follower.show(cluster.logs(namespace, name))
            if state[0] in FINISHED:
                return status
            time.sleep(poll_s)
    except KeyboardInterrupt:
        cluster.delete(namespace, name)
        print(f"\n[dreamloom] deleted RayJob {namespace}/{name}", flush=True)
        raise


class KubernetesCluster:
    """The four calls the launcher makes, through the official client (in-cluster config in a pod,
    ~/.kube/config elsewhere), with API errors turned into ones that say what to do."""

    def __init__(self):
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, FileNotFoundError) as exc:
                raise DreamloomError(f"no Kubernetes credentials: not in a pod and no kubeconfig ({exc})") from None
        self.custom, self.core = client.CustomObjectsApi(), client.CoreV1Api()

    def create(self, document: dict) -> None:
        namespace, name = document["metadata"]["namespace"], document["metadata"]["name"]
        with _explained(namespace, name):
            self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, document)

    def status(self, namespace: str, name: str) -> dict:
        with _explained(namespace, name):
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status", {})

    def logs(self, namespace: str, name: str) -> str:
        """The log of the job's submitter pod (K8sJobMode: a Kubernetes Job named like the RayJob)."""
        with _explained(namespace, name):
            pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
            if not pods:
                return ""
            newest = max(pods, key=lambda pod: pod.metadata.creation_timestamp)
            return self.core.read_namespaced_pod_log(newest.metadata.name, namespace)

    def delete(self, namespace: str, name: str) -> None:
        with _explained(namespace, name):
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


@contextmanager
def _explained(namespace: str, name: str):
    from kubernetes.client.exceptions import ApiException

    hints = {
        403: "the service account may not do this; install the chart's RBAC (the dreamloom-trainer role)",
        404: "not found; is the KubeRay operator (its RayJob CRD) installed?",
        409: "it already exists; delete it or choose another run name",
    }
    try:
        yield
    except ApiException as exc:
        raise DreamloomError(f"RayJob {namespace}/{name}: {hints.get(exc.status, exc.reason)}") from None
