"""Talking to the Kubernetes API: the four calls the kuberay launcher makes on RayJobs, through the
official client (in-cluster config in a pod, ~/.kube/config elsewhere), with API errors turned
into ones that say what to do. Everything else works on plain dicts and is tested without a cluster.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol

from dreamloom.errors import DreamloomError
from dreamloom.k8s.rayjob import API_VERSION

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "rayjobs"


class Cluster(Protocol):
    def create(self, document: dict) -> None: ...
    def status(self, namespace: str, name: str) -> dict: ...
    def logs(self, namespace: str, name: str) -> str: ...
    def delete(self, namespace: str, name: str) -> None: ...


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
        403: (
            "the service account may not do this; submit the run as the release's pipeline account "
            "(<fullname>-pipeline), which the chart's RBAC lets create RayJobs"
        ),
        404: "not found; is the KubeRay operator (its RayJob CRD) installed?",
        409: "it already exists; delete it or choose another run name",
    }
    try:
        yield
    except ApiException as exc:
        raise DreamloomError(f"RayJob {namespace}/{name}: {hints.get(exc.status, exc.reason)}") from None
