"""The Helm chart, rendered by the real helm and validated against the real schemas (no API server
can run here): every ci/ values file, GPU and MinIO switches, probes, security, credentials, the
values schema, and the agreement between the chart's RayCluster and the launcher's RayJobs."""

from __future__ import annotations

import json

import pytest
import yaml

from dreamloom.errors import DreamloomError
from dreamloom.k8s.manifests import load_documents, validate_documents
from dreamloom.k8s.names import ReleaseNames
from dreamloom.k8s.rayjob import RayJobSettings
from dreamloom.training.kuberay import rayjob_for
from tests.helpers import run_config
from tools.chart_lint import CHART, ci_values, helm, render, value_sets

GPU = "nvidia.com/gpu"


def objects(*sets: str, values: str | None = None) -> list[dict]:
    return load_documents(render([CHART / "ci" / values] if values else [], list(sets)))


def one(documents: list[dict], kind: str, suffix: str = "") -> dict:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return found


def pod_specs(documents: list[dict]) -> dict[str, dict]:
    """Every pod template: workloads, jobs and the RayCluster's head and workers."""
    specs = {}
    for document in documents:
        name = f"{document['kind']}/{document['metadata']['name']}"
        if document["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs[name] = document["spec"]["template"]["spec"]
        elif document["kind"] == "Pod":  # helm test hooks
            specs[name] = document["spec"]
        elif document["kind"] == "RayCluster":
            cluster = document["spec"]
            specs[f"{name}/head"] = cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster["workerGroupSpecs"]:
                specs[f"{name}/{group['groupName']}"] = group["template"]["spec"]
    return specs


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


ALL_ON = (
    "postgresql.enabled=true",
    "minio.enabled=true",
    "pipelineUpload.enabled=true",
    "triton.autoscaling.enabled=true",
)


@pytest.mark.parametrize("values", value_sets(), ids=lambda paths: "+".join(p.stem for p in paths) or "defaults")
def test_every_values_set_lints_and_renders_valid_objects(values):
    helm("lint", "--strict", str(CHART), *[item for path in values for item in ("-f", str(path))])
    documents = load_documents(render(values))
    assert validate_documents(documents) == len(documents) > 10


def test_the_ci_values_cover_gpu_on_and_off_and_minio_on_and_off():
    names = {path.name for path in ci_values()}
    assert names == {"minimal-values.yaml", "gpu-values.yaml", "dev-with-minio-values.yaml"}


def test_triton_gets_gpus_tolerations_and_gpu_nodes_only_when_asked():
    on = one(objects("triton.gpus=2"), "Deployment", "-triton")["spec"]["template"]["spec"]
    (server,) = on["containers"]
    assert server["resources"]["limits"][GPU] == 2 and server["resources"]["requests"][GPU] == 2
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in on["tolerations"]
    assert on["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    off = one(objects(values="minimal-values.yaml"), "Deployment", "-triton")["spec"]["template"]["spec"]
    assert GPU not in json.dumps(off)


def test_ray_workers_are_a_gpu_group_on_gpu_values_and_a_cpu_group_otherwise():
    gpu = one(objects(values="gpu-values.yaml"), "RayCluster")["spec"]["workerGroupSpecs"]
    assert [(g["groupName"], g["minReplicas"], g["maxReplicas"]) for g in gpu] == [("gpu-workers", 0, 8)]
    assert gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU] == "4"
    cpu = one(objects("training.workers.gpus=0"), "RayCluster")["spec"]["workerGroupSpecs"]
    assert cpu[0]["groupName"] == "cpu-workers" and GPU not in json.dumps(cpu)
    head = one(objects(values="gpu-values.yaml"), "RayCluster")["spec"]["headGroupSpec"]
    assert GPU not in json.dumps(head) and head["rayStartParams"]["num-gpus"] == "0"


def test_helm_test_checks_the_releases_own_triton_and_mlflow():
    """`helm test` runs `dreamloom check` against this release's Triton Service (by name and HTTP
    port), with MLflow's credentials and the labels MLflow's network policy admits."""
    documents = objects("fullnameOverride=shop", "triton.service.httpPort=8100", "triton.models={brand}")
    pod = one(documents, "Pod", "-test-check")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test" and pod["spec"]["restartPolicy"] == "Never"
    (check,) = pod["spec"]["containers"]
    assert check["command"] == ["dreamloom", "check"]
    arguments = dict(argument.removeprefix("--").split("=", 1) for argument in check["args"])
    service = one(documents, "Service", "-triton")
    assert arguments["triton-url"] == f"{service['metadata']['name']}:8100" and arguments["model-name"] == "brand"
    assert 8100 in {port["port"] for port in service["spec"]["ports"]}
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD"} <= {env["name"] for env in check["env"]}
    admitted = one(documents, "NetworkPolicy", "-mlflow")["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert admitted["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert not [d for d in objects("triton.enabled=false") if d["kind"] == "Pod"]


def _references(documents: list[dict]) -> set[tuple[str, str]]:
    """Every object the pod templates name: claims, service accounts, ConfigMaps (RayJob settings
    included: the claim and account RayJobs will use)."""
    found = set()
    for spec in pod_specs(documents).values():
        if account := spec.get("serviceAccountName"):
            found.add(("ServiceAccount", account))
        for volume in spec.get("volumes", []):
            if claim := volume.get("persistentVolumeClaim"):
                found.add(("PersistentVolumeClaim", claim["claimName"]))
    for document in documents:
        if document["kind"] == "RoleBinding":
            found |= {("ServiceAccount", subject["name"]) for subject in document["subjects"]}
        if document["kind"] == "ConfigMap" and "rayjob-settings.json" in document["data"]:
            settings = RayJobSettings.from_json(document["data"]["rayjob-settings.json"])
            found |= {("ServiceAccount", settings.service_account), ("PersistentVolumeClaim", settings.data_claim)}
    return found


def test_two_releases_in_one_namespace_share_no_object_and_each_uses_its_own():
    """`helm install a` and `helm install b` side by side: no object name in common, and every
    claim, account and settings ConfigMap a release's pods (and its RayJobs) use is its own."""
    releases = {name: load_documents(render(sets=list(ALL_ON), release=name)) for name in ("dreamloom", "brand-a")}
    created = {name: {(d["kind"], d["metadata"]["name"]) for d in documents} for name, documents in releases.items()}
    assert not created["dreamloom"] & created["brand-a"]
    for name, documents in releases.items():
        used = _references(documents)
        assert {kind for kind, _ in used} == {"ServiceAccount", "PersistentVolumeClaim"}
        assert used <= created[name], f"{name} uses objects it does not create: {used - created[name]}"


@pytest.mark.parametrize(
    "release, sets, expected",
    [
        ("dreamloom", [], ReleaseNames()),  # today's names, unchanged
        ("brand-a", [], ReleaseNames("brand-a-dreamloom")),
        ("dreamloom-prod", [], ReleaseNames("dreamloom-prod")),
        ("x", ["fullnameOverride=ads"], ReleaseNames("ads")),
    ],
)
def test_the_code_derives_a_releases_names_as_the_chart_does(release, sets, expected):
    """The pipelines compiled for a release (`--release`/`--fullname`) mount what that release created."""
    documents = load_documents(render(sets=sets, release=release))
    names = ReleaseNames(expected.fullname) if sets else ReleaseNames.of_release(release)
    assert names == expected
    assert {d["metadata"]["name"] for d in documents if d["kind"] == "PersistentVolumeClaim"} == {
        names.data_claim,
        names.serving_claim,
    }
    settings = one(documents, "ConfigMap", "-training")
    assert settings["metadata"]["name"] == names.training_settings
    assert RayJobSettings.from_json(settings["data"]["rayjob-settings.json"]).service_account == names.trainer_account
    accounts = {d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"}
    assert accounts == {names.pipeline_account, names.trainer_account}


def test_images_are_pulled_by_digest_when_one_is_given():
    digest = "sha256:" + "a" * 64
    documents = objects(f"image.digest={digest}", f"triton.image.digest={digest}", "pipelineUpload.enabled=true")
    images = {c["image"] for spec in pod_specs(documents).values() for c in containers(spec)}
    ours = {image for image in images if image.startswith("ghcr.io/dreamloom/")}
    assert ours == {f"ghcr.io/dreamloom/dreamloom@{digest}", f"ghcr.io/dreamloom/dreamloom-triton@{digest}"}
    tagged = {c["image"] for spec in pod_specs(objects()).values() for c in containers(spec)}
    assert "ghcr.io/dreamloom/dreamloom:0.1.0" in tagged  # no digest: the chart's appVersion tag
    with pytest.raises(RuntimeError, match="digest"):
        render([], ["image.digest=latest"])


def test_minio_and_postgres_exist_only_in_development_installs():
    dev = objects(values="dev-with-minio-values.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in dev}
    assert {("StatefulSet", "dreamloom-minio"), ("StatefulSet", "dreamloom-postgresql")} <= kinds
    assert ("Job", "dreamloom-minio-bucket") in kinds
    (mlflow,) = one(dev, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"]
    endpoint = {e["name"]: e for e in mlflow["env"]}["MLFLOW_S3_ENDPOINT_URL"]
    assert endpoint["value"] == "http://dreamloom-minio:9000"
    backend = {e["name"]: e for e in mlflow["env"]}["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert backend.endswith("@dreamloom-postgresql:5432/mlflow")

    production = objects(values="gpu-values.yaml")
    assert not [d for d in production if "minio" in d["metadata"]["name"] or "postgresql" in d["metadata"]["name"]]
    (mlflow,) = one(production, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"]
    assert "secretKeyRef" in {e["name"]: e for e in mlflow["env"]}["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]
    backend = {e["name"]: e for e in mlflow["env"]}["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert backend.endswith("@mlflow-db.example.internal:5432/mlflow")


def test_triton_probes_model_control_and_graceful_shutdown():
    documents = objects()
    spec = one(documents, "Deployment", "-triton")["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):  # the model, not only the process
        assert server[probe]["httpGet"]["path"] == "/v2/models/dreamloom/ready"
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # model loads take minutes
    assert "--model-control-mode=explicit" in server["args"] and "--load-model=dreamloom" in server["args"]
    exit_timeout = int(next(a for a in server["args"] if a.startswith("--exit-timeout-secs=")).split("=")[1])
    assert spec["terminationGracePeriodSeconds"] > exit_timeout
    assert one(documents, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["serving"]["persistentVolumeClaim"]["claimName"] == "dreamloom-serving"


def test_tritons_admin_apis_need_the_key_from_its_secret_and_only_deploy_steps_get_it(tmp_path):
    from dreamloom.k8s.secrets import TRITON_ADMIN_SECRET
    from dreamloom.serving.server import ADMIN_HEADER, RESTRICTED_APIS

    documents = objects()
    (server,) = one(documents, "Deployment", "-triton")["spec"]["template"]["spec"]["containers"]
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}=$(DREAMLOOM_TRITON_ADMIN_KEY)"
    assert f"--http-restricted-api={restricted}" in server["args"]
    assert f"--grpc-restricted-protocol={restricted}" in server["args"]
    (key,) = [entry for entry in server["env"] if entry["name"] == "DREAMLOOM_TRITON_ADMIN_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": TRITON_ADMIN_SECRET, "key": "admin-key"}
    # No other pod of the chart carries it (Ray, MLflow, the upload job).
    for name, spec in pod_specs(documents).items():
        if not name.endswith("-triton"):
            assert not [e for c in containers(spec) for e in c.get("env", []) if "TRITON_ADMIN" in e["name"]], name
    # In the pipelines, only the steps that deploy get it.
    from pipelines import NAMES, compile_pipeline

    for pipeline in NAMES:
        spec = list(yaml.safe_load_all(compile_pipeline(pipeline, tmp_path / f"{pipeline}.yaml").read_text()))
        executors = spec[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        with_key = sorted(
            name
            for name, executor in executors.items()
            if TRITON_ADMIN_SECRET in [secret["secretName"] for secret in executor.get("secretAsEnv", [])]
        )
        expected = {"personalize": ["exec-deploy"], "augment": ["exec-synthesize-and-compare"], "batch_ads": []}
        assert with_key == expected[pipeline], pipeline


def test_the_init_container_writes_the_releases_serving_limits_into_the_model_config(tmp_path):
    """Run the rendered init command (paths pointed here) and read the config Triton would load."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    values = (
        "triton.maxRequestCost=12",
        "triton.queueTimeoutSeconds=7",
        "triton.maxQueueSize=9",
        "triton.precision=bf16",
        "triton.compile=true",
    )
    (seed,) = one(objects(*values), "Deployment", "-triton")["spec"]["template"]["spec"]["initContainers"]
    checked_in = Path(__file__).parents[1] / "serving" / "model_repository"
    script = seed["command"][2].replace("/opt/dreamloom/model_repository", str(checked_in))
    script = script.replace("/serving/models", str(tmp_path / "models")).replace("python3", sys.executable)
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for _ in range(2):  # the first start seeds the volume; a later one finds it and only reconfigures
        subprocess.run(["sh", "-c", script], check=True, env=environment, capture_output=True)
    text = (tmp_path / "models" / "dreamloom" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.parameters["max_request_megapixel_steps"].string_value == "12"
    queue = config.dynamic_batching.default_queue_policy
    assert queue.default_timeout_microseconds == 7_000_000 and queue.max_queue_size == 9
    assert config.parameters["precision"].string_value == "bf16"
    assert config.parameters["compile"].string_value == "true"
    assert config.parameters["channels_last"].string_value == "false"  # not asked for
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_a_grace_period_shorter_than_tritons_exit_timeout_is_refused():
    refusal = r"terminationGracePeriodSeconds \(60\) must be larger than triton.exitTimeoutSeconds \(120\)"
    with pytest.raises(RuntimeError, match=refusal):
        render([], ["triton.exitTimeoutSeconds=120", "triton.terminationGracePeriodSeconds=60"])


def test_autoscaling_on_queue_time_and_the_optional_service_monitor():
    documents = objects(values="gpu-values.yaml")
    hpa = one(documents, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "triton_queue_time_us"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert "replicas" not in one(documents, "Deployment", "-triton")["spec"]  # the HPA owns it
    assert not [d for d in objects() if d["kind"] == "HorizontalPodAutoscaler"]

    monitored = objects("triton.serviceMonitor.enabled=true")
    assert one(monitored, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"
    # Its CRD is not vendored: the check refuses a custom resource it cannot validate.
    with pytest.raises(DreamloomError, match=r"ServiceMonitor/dreamloom-triton: no CRD schema"):
        validate_documents(monitored)


def test_every_pod_and_container_is_hardened_and_has_resources():
    documents = objects(*ALL_ON, "triton.gpus=1")
    specs = pod_specs(documents)
    assert len(specs) >= 8
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in containers(spec):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"], where
            assert security["readOnlyRootFilesystem"] is True, where
            assert container["resources"]["requests"] and container["resources"]["limits"], where


def test_credentials_are_only_secret_references():
    documents = objects(*ALL_ON)
    assert not [d for d in documents if d["kind"] == "Secret"]
    credential_words = ("PASSWORD", "SECRET", "ACCESS_KEY", "USER", "TOKEN", "TRACKING_URI", "ENDPOINT")
    for name, spec in pod_specs(documents).items():
        for container in containers(spec):
            for entry in container.get("env", []):
                if any(word in entry["name"] for word in credential_words) and entry.get("value"):
                    assert entry["name"] == "MLFLOW_S3_ENDPOINT_URL" and "minio" in entry["value"], (name, entry)
    with pytest.raises(RuntimeError, match="additional properties 'password' not allowed"):
        render([], ["secrets.password=hunter2"])


def test_the_values_schema_refuses_bad_values_with_the_field_named():
    with pytest.raises(RuntimeError, match="at '/triton/replicas': minimum: got -1, want 0"):
        render([], ["triton.replicas=-1"])
    with pytest.raises(RuntimeError, match="at '/triton': additional properties 'replcas' not allowed"):
        render([], ["triton.replcas=2"])
    with pytest.raises(RuntimeError, match="at '/storage/data/size': 'lots' does not match"):
        render([], ["storage.data.size=lots"])


def test_rbac_lets_pipeline_steps_run_rayjobs_and_nothing_more():
    documents = objects()
    rules = one(documents, "Role")["rules"]
    assert rules == [
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    ]
    (subject,) = one(documents, "RoleBinding")["subjects"]
    assert subject == {"kind": "ServiceAccount", "name": "dreamloom-pipeline", "namespace": "dreamloom"}
    assert not [d for d in documents if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_network_policies_deny_by_default_and_open_what_each_component_serves():
    documents = objects(*ALL_ON)
    policies = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "NetworkPolicy"}
    assert "ingress" not in policies["dreamloom-default-deny"]
    postgres = policies["dreamloom-postgresql"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert postgres["app.kubernetes.io/component"] == "mlflow"
    assert not [d for d in objects("networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]


def test_no_credential_is_ever_on_a_command_line():
    """A container's arguments are in its pod spec and every process listing; credentials stay in
    env (from Secrets) or files. Triton is the one exception, and only for its admin key, which
    tritonserver takes as a flag alone (readable inside its pod only)."""
    for name, spec in pod_specs(objects(*ALL_ON)).items():
        for container in containers(spec):
            secret_env = {e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
            line = " ".join(container.get("command", []) + container.get("args", []))
            used = {variable for variable in secret_env if f"$({variable})" in line}
            allowed = {"DREAMLOOM_TRITON_ADMIN_KEY"} if name.endswith("-triton") else set()
            assert used <= allowed, (name, container["name"], used)
            assert "password" not in line.lower() or "${MLFLOW_ADMIN_PASSWORD}" in line, (name, container["name"])


def test_mlflow_needs_a_user_and_only_pipeline_steps_ray_and_the_ui_reach_it():
    documents = objects(*ALL_ON, "networkPolicy.mlflowUiNamespaces[0].kubernetes\\.io/metadata\\.name=ingress-nginx")
    (server,) = one(documents, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"]
    assert "exec mlflow server --app-name basic-auth" in server["args"][0]
    env = {entry["name"]: entry for entry in server["env"]}
    assert env["MLFLOW_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dreamloom-mlflow-admin",
        "key": "password",
    }
    assert "secretKeyRef" in env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]
    policies = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "NetworkPolicy"}
    sources = policies["dreamloom-mlflow"]["ingress"][0]["from"]
    assert {"podSelector": {}} not in sources  # not every pod of the namespace
    assert sources[0] == {"podSelector": {"matchLabels": {"pipelines.kubeflow.org/v2_component": "true"}}}
    assert sources[1] == {"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}}
    assert sources[2] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    (jobs_api,) = [rule for rule in policies["dreamloom-ray"]["ingress"] if "ports" in rule]
    assert jobs_api["from"] == [sources[0]]  # Ray's Jobs API and client port: pipeline steps only
    plain = objects("mlflow.auth.enabled=false")
    (open_server,) = one(plain, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"]
    assert "--app-name" not in open_server["args"][0] and "MLFLOW_ADMIN_PASSWORD" not in str(open_server["env"])


@pytest.mark.parametrize("values", ["gpu-values.yaml", "dev-with-minio-values.yaml"])
def test_the_launchers_rayjob_matches_the_charts_raycluster(values, tmp_path):
    """The kuberay launcher reads the chart's settings (ConfigMap dreamloom-training) and renders
    pods identical to the RayCluster's: image, service account, GPU group, volumes, credentials."""
    documents = objects(values=values)
    settings_json = one(documents, "ConfigMap", "dreamloom-training")["data"]["rayjob-settings.json"]
    settings = RayJobSettings.from_json(settings_json)
    cluster = one(documents, "RayCluster")["spec"]
    chart_worker = cluster["workerGroupSpecs"][0]
    gpus = int(chart_worker["template"]["spec"]["containers"][0]["resources"]["limits"].get(GPU, 0))
    config = run_config(tmp_path, tmp_path / "shoe", scaling__workers=2, scaling__gpus_per_worker=gpus)
    job = rayjob_for(config, settings)["spec"]
    job_worker = job["rayClusterSpec"]["workerGroupSpecs"][0]

    assert job["rayClusterSpec"]["rayVersion"] == cluster["rayVersion"]
    assert job_worker["groupName"] == chart_worker["groupName"]
    for from_job, from_chart in (
        (job_worker["template"]["spec"], chart_worker["template"]["spec"]),
        (job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"], cluster["headGroupSpec"]["template"]["spec"]),
    ):
        for container in from_chart["containers"]:
            container.pop("imagePullPolicy")
        assert from_job == from_chart


def test_every_values_key_is_documented():
    """Each setting has a ``# --`` comment block right above it (sections and the free-form
    Kubernetes resources maps excepted)."""
    import re

    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, free_form_indent = [], None
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):(.*)$", line)
        if not match:
            continue
        indent, key, value = len(match[1]), match[2], match[3].strip()
        if free_form_indent is not None and indent > free_form_indent:
            continue
        free_form_indent = indent if key == "resources" else None
        following = next((n for n in lines[number + 1 :] if n.strip() and not n.strip().startswith("#")), "")
        is_section = not value and len(following) - len(following.lstrip()) > indent and ":" in following
        if is_section and key != "resources":
            continue
        comments = []
        for previous in reversed(lines[:number]):
            if not previous.strip().startswith("#"):
                break
            comments.append(previous.strip())
        if not any(comment.startswith("# --") for comment in comments):
            undocumented.append(key)
    assert undocumented == []


def test_the_studio_is_off_by_default_and_when_on_needs_users_and_admits_only_named_namespaces():
    assert not [d for d in objects() if d["metadata"]["name"].endswith("-studio")]
    documents = objects("studio.enabled=true", "studio.rootPath=/studio")
    spec = one(documents, "Deployment", "-studio")["spec"]["template"]["spec"]
    (studio,) = spec["containers"]
    assert spec["serviceAccountName"] == "dreamloom-pipeline"  # may create RayJobs, as train steps do
    assert "--host=0.0.0.0" in studio["args"] and "--root-path=/studio" in studio["args"]
    assert "--triton-url=dreamloom-triton:8000" in studio["args"]
    env = {entry["name"]: entry.get("valueFrom", {}) for entry in studio["env"]}
    assert env["DREAMLOOM_STUDIO_AUTH"]["secretKeyRef"] == {"name": "dreamloom-studio-users", "key": "users"}
    assert env["DREAMLOOM_TRITON_ADMIN_KEY"]["secretKeyRef"]["key"] == "admin-key"  # it deploys
    mounts = {mount["mountPath"] for mount in studio["volumeMounts"]}
    assert {"/data", "/serving"} <= mounts
    policies = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "NetworkPolicy"}
    assert policies["dreamloom-studio"]["ingress"] == []  # nobody, until an ingress namespace is named
    studio_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "dreamloom",
                                                   "app.kubernetes.io/instance": "dreamloom",
                                                   "app.kubernetes.io/component": "studio"}}}  # fmt: skip
    assert studio_pods in policies["dreamloom-mlflow"]["ingress"][0]["from"]
    named = objects("studio.enabled=true", "networkPolicy.studioNamespaces[0].team=web")
    policy = {d["metadata"]["name"]: d["spec"] for d in named if d["kind"] == "NetworkPolicy"}["dreamloom-studio"]
    assert policy["ingress"] == [
        {
            "ports": [{"port": 7860, "protocol": "TCP"}],
            "from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}],
        }
    ]
