"""The model registry on MLflow: register, list, promote through the gate, roll back.

A registered model is one concept (``shoe``); each version is one artifact, stored as a pyfunc
model that generates images, with its manifest, lineage tags (method, base model and revision,
dataset hash, trigger token, training run) and its evaluation metrics. Aliases say what is in
production: ``champion`` (serving) and ``challenger`` (proposed). Everything that can be wrong
with an artifact is checked before anything is written, and the version is created in a single
call with all its tags, so a failed registration leaves no version behind.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dreamloom.artifacts import ArtifactManifest
from dreamloom.errors import ArtifactError, DreamloomError
from dreamloom.registry.gate import Check, Evaluated, GateConfig, gate
from dreamloom.registry.integrity import check_artifact, check_manifest_digest, manifest_digest
from dreamloom.settings import tracking_uri
from dreamloom.tracking import Lineage, Tag, log_picture, plain

EXPERIMENT = "dreamloom-registry"
CHAMPION, CHALLENGER = "champion", "challenger"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def client():
    from dreamloom.tracking import client as tracking_client

    return tracking_client(tracking_uri())


# ----- registering -----


def check_model_name(name: str) -> None:
    if not _NAME.match(name):
        raise DreamloomError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 100)")


def check_registrable(artifact: Path, name: str, mlflow) -> ArtifactManifest:
    """Every reason to refuse ``artifact`` as a version of ``name``, before anything is written: its
    content (``integrity.check_artifact``) and its base against the versions already there."""
    check_model_name(name)
    manifest = check_artifact(artifact)
    existing = _registered_model(mlflow, name)
    if existing is not None:
        _check_same_base(existing, name, manifest)
    return manifest


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    encoders: tuple[str, str]
    run_id: str | None = None
    grids: tuple = ()  # (prompt, image) pairs, shown beside the version's metrics


def register(artifact: Path, name: str, evaluation: Evaluation | None = None):
    """A new version of ``name`` holding ``artifact``; returns the MLflow ModelVersion."""
    import mlflow

    from dreamloom.registry.pyfunc import ADAPTER, MODEL_CODE, SIGNATURE, attach_input_example, input_example
    from dreamloom.tracking import experiment_id

    registry = client()
    manifest = check_registrable(artifact, name, registry)
    claimed = _claim_name(registry, name, manifest)  # before anything else is written
    mlflow.set_tracking_uri(registry.tracking_uri)
    run = registry.create_run(
        experiment_id(registry, EXPERIMENT), run_name=f"register-{name}", tags=manifest.lineage().tags()
    )
    run_id = run.info.run_id
    try:
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example.*")  # attached below, without a run
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts={ADAPTER: str(artifact)},
                code_paths=[str(Path(__file__).parents[1])],
                signature=SIGNATURE,
                pip_requirements=_requirements(),
            )
        attach_input_example(registry, info.model_id, input_example(manifest))
        if evaluation:
            registry.log_batch(run_id, metrics=_metrics(evaluation, info.model_id))
            for index, (_, grid) in enumerate(evaluation.grids):
                log_picture(registry, run_id, grid, f"prompt_{index:02d}", f"samples/prompt_{index:02d}.png")
        tags = {**manifest.lineage().tags(), **_evaluation_tags(evaluation)}
        tags[str(Tag.MANIFEST_SHA256)] = manifest_digest(artifact)
        version = registry.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags=tags,
            description=_describe(manifest, registry),
            model_id=info.model_id,
        )
    except BaseException:
        registry.set_terminated(run_id, status="FAILED")
        if claimed:
            _release_name(registry, name)
        raise
    registry.set_terminated(run_id)
    return version


def _evaluation_tags(evaluation: Evaluation | None) -> dict[str, str]:
    if evaluation is None:
        return {}
    tags = {f"{Tag.METRIC_PREFIX}{k}": repr(float(v)) for k, v in evaluation.metrics.items()}
    tags[Tag.EVAL_CLIP_ENCODER], tags[Tag.EVAL_DINO_ENCODER] = evaluation.encoders
    if evaluation.run_id:
        tags[Tag.EVAL_RUN_ID] = evaluation.run_id
    return plain(tags)


def _metrics(evaluation: Evaluation, model_id: str):
    """The evaluation's metrics, linked to the logged model (MLflow 3 shows them on the model's page)."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    return [Metric(k, float(v), stamp, 0, model_id=model_id) for k, v in evaluation.metrics.items()]


def _describe(manifest: ArtifactManifest, registry) -> str:
    random = " (random weights: it draws noise)" if manifest.base_model.random_weights else ""
    base = manifest.base_model.spec + random
    lines = [f"{manifest.method} artifact on {base}, trigger `{manifest.trigger_token}`."]
    if manifest.mlflow_run_id:
        try:
            run = registry.get_run(manifest.mlflow_run_id)
            link = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            lines.append(f"Trained in [run {manifest.mlflow_run_id}]({link}).")
        except Exception:  # trained against another tracking server: keep the id only
            lines.append(f"Trained in run {manifest.mlflow_run_id}.")
    return " ".join(lines)


def _requirements() -> list[str]:
    from importlib.metadata import version

    packages = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "pillow", "pydantic")
    return [f"{package}=={version(package)}".replace("+cpu", "") for package in packages]


def _registered_model(mlflow, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _claim_name(mlflow, name: str, manifest: ArtifactManifest) -> bool:
    """Create the registered model with the artifact's base, or check the base it was created with.
    Creation is atomic in MLflow: of two first registrations on different bases, one creates the
    model and the other is refused here, before it writes anything. True when this call created it."""
    from mlflow.exceptions import MlflowException

    base = manifest.base_model
    tags = plain(
        {Tag.BASE_MODEL: base.spec, Tag.BASE_MODEL_REVISION: base.revision, Tag.BASE_MODEL_WEIGHTS: base.weights}
    )
    try:
        mlflow.create_registered_model(name, tags=tags, description=f"dreamloom concept {name!r}")
        return True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    _check_same_base(_registered_model(mlflow, name), name, manifest)
    return False


def _check_same_base(existing, name: str, manifest: ArtifactManifest) -> None:
    wanted = (existing.tags.get(Tag.BASE_MODEL), existing.tags.get(Tag.BASE_MODEL_REVISION))
    spec, revision = manifest.base_model.spec, str(manifest.base_model.revision)
    if wanted != (spec, revision):
        raise ArtifactError(
            f"model {name!r} holds versions for base {wanted[0]} (revision {wanted[1]}); this artifact "
            f"was trained on {spec} (revision {revision}); register it under another name"
        )


def _release_name(mlflow, name: str) -> None:
    """Undo a claim whose registration failed, unless a concurrent registration added a version."""
    if not mlflow.search_model_versions(f"name = '{name}'", max_results=1):
        mlflow.delete_registered_model(name)


# ----- reading -----


def resolve(reference: str, version: str | None = None):
    """``NAME@ALIAS``, ``NAME/VERSION`` or ``NAME`` with ``version``: the MLflow ModelVersion."""
    from mlflow.exceptions import MlflowException

    registry = client()
    name, alias = reference.split("@", 1) if "@" in reference else (reference, None)
    if "/" in name:
        name, version = name.split("/", 1)
    try:
        if alias:
            return registry.get_model_version_by_alias(name, alias)
        if version is None:
            raise DreamloomError(f"say which version of {name!r}: NAME@ALIAS, NAME/VERSION or --version V")
        return registry.get_model_version(name, str(version))
    except MlflowException as exc:
        raise DreamloomError(
            f"no model version {reference}{'' if version is None else ' v' + str(version)}: {exc.message}"
        ) from None


def evaluated(version) -> Evaluated:
    tags = version.tags
    metrics = {k[len(Tag.METRIC_PREFIX) :]: float(v) for k, v in tags.items() if k.startswith(Tag.METRIC_PREFIX)}
    encoders = (tags.get(Tag.EVAL_CLIP_ENCODER, ""), tags.get(Tag.EVAL_DINO_ENCODER, ""))
    return Evaluated(str(version.version), metrics, encoders)


def download_artifact(version) -> Path:
    """The artifact folder of a registered version, fetched from the tracking server."""
    import mlflow

    from dreamloom.registry.pyfunc import ADAPTER

    mlflow.set_tracking_uri(tracking_uri())
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}"))
    # MLflow keeps the folder's own name under artifacts/; the MLmodel file says where it went.
    pyfunc = mlflow.models.Model.load(str(local / "MLmodel")).flavors["python_function"]
    folder = local / pyfunc["artifacts"][ADAPTER]["path"]
    check_manifest_digest(folder, version.tags.get(Tag.MANIFEST_SHA256), f"{version.name} v{version.version}")
    return folder


def evaluation_of_run(run_id: str) -> Evaluation:
    """The evaluation an MLflow run (from ``log_evaluation``) holds, ready to register with."""
    from mlflow.exceptions import MlflowException

    from dreamloom.evaluation import METRICS

    try:
        run = client().get_run(run_id)
    except MlflowException as exc:
        raise DreamloomError(f"no evaluation run {run_id}: {exc.message}") from None
    metrics = {name: run.data.metrics[name] for name in METRICS if name in run.data.metrics}
    if not metrics:
        raise DreamloomError(f"run {run_id} holds no evaluation metrics")
    encoders = (
        run.data.tags.get(Tag.EVAL_CLIP_ENCODER, ""),
        run.data.tags.get(Tag.EVAL_DINO_ENCODER, ""),
    )
    return Evaluation(metrics, encoders, run_id)


def attach_evaluation(version, evaluation: Evaluation) -> None:
    registry = client()
    for key, value in _evaluation_tags(evaluation).items():
        registry.set_model_version_tag(version.name, str(version.version), key, value)


@dataclass(frozen=True)
class VersionRow:
    """One registered version, as ``dreamloom registry list`` shows it."""

    name: str
    version: int
    lineage: Lineage
    metrics: dict[str, float]
    aliases: list[str]
    created: int  # milliseconds since the epoch, as MLflow keeps it

    @property
    def method(self) -> str:
        return self.lineage.method


def list_versions(name: str | None = None) -> list[VersionRow]:
    registry = client()
    names = [name] if name else [model.name for model in registry.search_registered_models()]
    rows = []
    for model_name in names:
        model = _registered_model(registry, model_name)
        if model is None:
            raise DreamloomError(f"no registered model {model_name!r}")
        aliases: dict[str, list[str]] = {}
        for alias, number in model.aliases.items():
            aliases.setdefault(str(number), []).append(alias)
        for version in registry.search_model_versions(f"name = '{model_name}'"):
            rows.append(
                VersionRow(
                    name=model_name,
                    version=int(version.version),
                    lineage=Lineage.from_tags(version.tags),
                    metrics=evaluated(version).metrics,
                    aliases=sorted(aliases.get(str(version.version), [])),
                    created=version.creation_timestamp,
                )
            )
    return sorted(rows, key=lambda row: (row.name, -row.version))


# ----- promoting -----


@dataclass
class Promotion:
    name: str
    version: str
    previous_champion: str | None
    checks: list[Check]
    moved: bool
    forced: bool = False

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


# What SQLite, MySQL and PostgreSQL say when two writers insert the same alias row at once.
_ALIAS_RACE = re.compile(r"UNIQUE constraint failed|Duplicate entry|duplicate key value", re.IGNORECASE)


def _point_alias(registry, name: str, alias: str, version: str, attempts: int = 5) -> None:
    """Point ``alias`` at ``version``. MLflow's SQL store reads the alias row, then inserts it:
    two promotions at once can both read "absent" and one insert fails on the unique key. The
    row exists by then, so writing again updates it (the last writer wins, as with no race)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            registry.set_registered_model_alias(name, alias, version)
            return
        except MlflowException as error:
            if attempt == attempts - 1 or not _ALIAS_RACE.search(str(error)):
                raise
            time.sleep(0.05 * (attempt + 1))


def judge(name: str, version: str, config: GateConfig | None = None) -> Promotion:
    """Make ``version`` the challenger and hold it against the champion; moves nothing else.
    ``previous_champion == version`` means it already is the champion (nothing to judge)."""
    registry = client()
    challenger = resolve(name, version)
    _point_alias(registry, name, CHALLENGER, str(challenger.version))
    champion = _alias(registry, name, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        return Promotion(name, str(challenger.version), str(champion.version), [], moved=False)
    checks = gate(evaluated(challenger), evaluated(champion) if champion else None, config or GateConfig())
    return Promotion(name, str(challenger.version), champion and str(champion.version), checks, moved=False)


def promote(
    name: str, version: str, config: GateConfig | None = None, force: bool = False, reason: str | None = None
) -> Promotion:
    """Make ``version`` the challenger; if it passes the gate (or is forced), the champion."""
    if force and not (reason and reason.strip()):
        raise DreamloomError("--force needs --reason TEXT: overriding the gate is recorded with its reason")
    registry = client()
    result = judge(name, version, config)
    if result.previous_champion == result.version or (not result.passed and not force):
        return result
    challenger, champion = resolve(name, result.version), _alias(registry, name, CHAMPION)
    # The promotion is recorded on the version it promotes: concurrent promotions each write their
    # own record, so none is lost (the history is read from these records, never kept as a list).
    version_number = str(challenger.version)
    registry.set_model_version_tag(name, version_number, str(Tag.PROMOTED_AT), _now())
    _point_alias(registry, name, CHAMPION, version_number)
    if champion is not None:
        registry.set_model_version_tag(name, str(challenger.version), str(Tag.PREVIOUS_CHAMPION), str(champion.version))
    if not result.passed:
        registry.set_model_version_tag(name, str(challenger.version), str(Tag.FORCED_REASON), reason.strip())
        result.forced = True
    result.moved = True
    return result


@dataclass(frozen=True)
class ChampionRecord:
    version: str
    promoted_at: str  # ISO 8601 UTC with microseconds: sorts as it reads
    rolled_back_at: str | None = None

    @property
    def standing(self) -> bool:
        """Promoted and not rolled back since."""
        return self.rolled_back_at is None or self.rolled_back_at < self.promoted_at


def champion_history(name: str) -> list[ChampionRecord]:
    """Every version's latest promotion, oldest first, read from the versions' own records."""
    records = [
        ChampionRecord(str(v.version), v.tags[Tag.PROMOTED_AT], v.tags.get(Tag.ROLLED_BACK_AT))
        for v in client().search_model_versions(f"name = '{name}'")
        if Tag.PROMOTED_AT in v.tags
    ]
    return sorted(records, key=lambda record: (record.promoted_at, int(record.version)))


def rollback(name: str) -> tuple[str, str]:
    """Move ``champion`` back to the version promoted before it (and not rolled back); returns (from, to)."""
    registry = client()
    champion = _alias(registry, name, CHAMPION)
    if champion is None:
        raise DreamloomError(f"model {name!r} has no champion to roll back")
    current = str(champion.version)
    history = champion_history(name)
    since = next((record.promoted_at for record in history if record.version == current), None)
    earlier = [r for r in history if r.version != current and r.standing and (since is None or r.promoted_at < since)]
    if not earlier:
        raise DreamloomError(f"model {name!r} has no earlier champion than version {current}")
    previous = earlier[-1].version
    _point_alias(registry, name, CHAMPION, previous)
    registry.set_model_version_tag(name, current, str(Tag.ROLLED_BACK_AT), _now())
    return current, previous


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _alias(registry, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return registry.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
