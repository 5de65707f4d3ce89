"""The Kubernetes Secrets that hold service credentials, and the environment variables their keys
become in every pod that needs them (pipeline steps, Ray heads and workers).

One mapping, so that the chart's Secrets, the pipeline and the RayJob agree on key names.
"""

from __future__ import annotations

MLFLOW_SECRET = "dreamloom-mlflow"
OBJECT_STORE_SECRET = "dreamloom-object-store"
# Triton's admin key: only Triton and the steps that deploy read it (not training, not Ray).
TRITON_ADMIN_SECRET = "dreamloom-triton-admin"

SECRET_ENV: dict[str, dict[str, str]] = {
    MLFLOW_SECRET: {
        "tracking-uri": "MLFLOW_TRACKING_URI",
        "username": "MLFLOW_TRACKING_USERNAME",
        "password": "MLFLOW_TRACKING_PASSWORD",
    },
    OBJECT_STORE_SECRET: {
        "access-key": "AWS_ACCESS_KEY_ID",
        "secret-key": "AWS_SECRET_ACCESS_KEY",
        "endpoint": "MLFLOW_S3_ENDPOINT_URL",
    },
}


def secret_env_vars() -> list[dict]:
    """Container ``env`` entries reading every credential from its Secret (optional: a cluster
    without object-store credentials, say, still starts)."""
    entries = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for secret, keys in SECRET_ENV.items()
        for key, env in keys.items()
    ]
    return sorted(entries, key=lambda entry: entry["name"])  # the chart's order (Helm sorts dict keys)
