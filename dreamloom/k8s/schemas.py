"""Validating custom resources against the openAPIV3Schema of their CRD (KubeRay's, shipped here)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from dreamloom.errors import DreamloomError

CRD_FOLDER = Path(__file__).with_name("crds")


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the version's openAPIV3Schema, for every CRD in ``crds/``."""
    schemas = {}
    for path in sorted(CRD_FOLDER.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate_custom_resource(document: dict) -> None:
    """Raise DreamloomError naming every problem; a kind without a known CRD is itself an error."""
    import jsonschema

    key = (document.get("apiVersion", ""), document.get("kind", ""))
    schema = crd_schemas().get(key)
    if schema is None:
        raise DreamloomError(f"no CRD schema for {key[0]} {key[1]}: cannot validate it")
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path))
    problems = [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]
    problems += unknown_fields(document, schema)
    if problems:
        lines = problems[:10]
        raise DreamloomError(
            f"{key[1]} {document.get('metadata', {}).get('name')} is invalid:\n  " + "\n  ".join(lines)
        )


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not define (the API server would silently drop them: typos)."""
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        found = []
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key not in schema["properties"]:
                if not schema.get("additionalProperties"):
                    found.append(f"{where}: unknown field")
                continue
            found += unknown_fields(item, schema["properties"][key], where)
        return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            problem
            for index, item in enumerate(value)
            for problem in unknown_fields(item, schema["items"], f"{path}[{index}]")
        ]
    return []
