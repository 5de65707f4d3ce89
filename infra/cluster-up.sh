#!/usr/bin/env bash
# make cluster-up: a development cluster on a machine with Docker, kind, kubectl and helm.
# kind cluster -> KubeRay operator -> Kubeflow Pipelines -> dreamloom images -> secrets -> chart
# -> pipeline upload. (Not run in CI: no Docker there.) GPU clusters: see README, "Installing on a cluster".
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/install/versions.env
VERSION=$(python3 -c "import re; print(re.search(r'__version__ = \"(.+)\"', open('dreamloom/__init__.py').read())[1])")
NAMESPACE=kubeflow  # KFP standalone runs pipelines here; the chart goes beside them

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "cluster-up needs $tool on PATH" >&2; exit 1; }
done

echo "== kind cluster"
kind get clusters | grep -qx dreamloom || kind create cluster --config infra/kind/cluster.yaml --image "$KIND_NODE_IMAGE"

echo "== KubeRay operator $KUBERAY_OPERATOR_CHART_VERSION"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_OPERATOR_CHART_VERSION" \
  --namespace kuberay-system --create-namespace -f infra/install/kuberay-operator-values.yaml --wait

echo "== Kubeflow Pipelines $KFP_VERSION"
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
kubectl apply -k infra/install/kfp
kubectl -n "$NAMESPACE" rollout status deployment/ml-pipeline --timeout=15m

echo "== images $VERSION"
docker build -f infra/Dockerfile -t "ghcr.io/dreamloom/dreamloom:$VERSION" .
docker build -f infra/Dockerfile.triton -t "ghcr.io/dreamloom/dreamloom-triton:$VERSION" .
kind load docker-image --name dreamloom "ghcr.io/dreamloom/dreamloom:$VERSION" "ghcr.io/dreamloom/dreamloom-triton:$VERSION"

echo "== secrets (random development credentials, created here and never in the chart)"
secret() { kubectl -n "$NAMESPACE" get secret "$1" >/dev/null 2>&1 || kubectl -n "$NAMESPACE" create secret generic "$@"; }
secret dreamloom-postgres --from-literal=username=mlflow --from-literal=password="$(openssl rand -hex 16)"
secret dreamloom-object-store --from-literal=access-key=dreamloom --from-literal=secret-key="$(openssl rand -hex 16)" \
  --from-literal=endpoint="http://dreamloom-minio.$NAMESPACE:9000"
secret dreamloom-mlflow --from-literal=tracking-uri="http://dreamloom-mlflow.$NAMESPACE:5000"

echo "== dreamloom chart"
helm upgrade --install dreamloom charts/dreamloom --namespace "$NAMESPACE" \
  -f charts/dreamloom/ci/dev-with-minio-values.yaml -f infra/install/kind-values.yaml \
  --set pipelineUpload.enabled=true --set pipelineUpload.kfpHost="http://ml-pipeline.$NAMESPACE:8888" --wait --timeout 30m

echo "== done"
echo "KFP UI:  kubectl -n $NAMESPACE port-forward svc/ml-pipeline-ui 8080:80"
echo "MLflow:  kubectl -n $NAMESPACE port-forward svc/dreamloom-mlflow 5000"
echo "Triton:  kubectl -n $NAMESPACE port-forward svc/dreamloom-triton 8000"
