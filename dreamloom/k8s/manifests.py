"""Validating rendered Kubernetes objects without a cluster: built-in kinds against the pinned
Kubernetes version's OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors),
custom resources against their CRD (dreamloom.k8s.schemas). An object of a kind neither knows is
an error, never a silent pass.
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from dreamloom.errors import DreamloomError

KUBERNETES_VERSION = "1.33"


def load_documents(text: str) -> list[dict]:
    return [document for document in yaml.safe_load_all(text) if document]


def problems_of(document: dict, kubernetes_version: str = KUBERNETES_VERSION) -> list[str]:
    """Everything wrong with one object, each line naming the object and the field."""
    import kubernetes_validate

    where = f"{document.get('kind', '?')}/{document.get('metadata', {}).get('name', '?')}"
    try:
        kubernetes_validate.validate(document, kubernetes_version, strict=True)
        return []
    except kubernetes_validate.ValidationError as exc:
        field = ".".join(str(part) for part in exc.path) or "(root)"
        return [f"{where}: {field}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        pass  # not a built-in kind: a custom resource
    from dreamloom.k8s.schemas import validate_custom_resource

    try:
        validate_custom_resource(document)
    except DreamloomError as exc:
        return [f"{where}: {exc}"]
    return []


def validate_documents(documents: Iterable[dict], kubernetes_version: str = KUBERNETES_VERSION) -> int:
    """Raise DreamloomError listing every problem; returns how many objects were checked."""
    documents = list(documents)
    problems = [line for document in documents for line in problems_of(document, kubernetes_version)]
    if problems:
        raise DreamloomError("invalid Kubernetes objects:\n  " + "\n  ".join(problems))
    return len(documents)
