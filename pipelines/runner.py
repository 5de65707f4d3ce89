"""Running the personalize pipeline: on this machine with KFP's local runner, or on a KFP backend."""

import builtins
import contextlib
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from dreamloom.errors import DreamloomError
from dreamloom.k8s.names import DEFAULT_RELEASE, ReleaseNames


def pipeline_arguments(config_file: Path, model_name: str, **extra) -> dict:
    """The pipeline's arguments from a run-config YAML (validated now, before anything runs)."""
    from dreamloom.config import pipeline_run_config
    from dreamloom.registry import GateConfig
    from dreamloom.training.launcher import LAUNCHERS

    if not Path(config_file).is_file():
        raise DreamloomError(f"run config {config_file} does not exist")
    document = yaml.safe_load(Path(config_file).read_text()) or {}
    document.pop("output", None)  # the pipeline chooses where artifacts go
    pipeline_run_config(document, output="validation-only")
    check_step_parameters(model_name, extra)
    if extra.get("gate_config") is not None:
        GateConfig.parse(extra["gate_config"])
    launcher = extra.get("launcher") or "local"
    if launcher not in LAUNCHERS:
        raise DreamloomError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    if launcher != "local" and extra.get("train_gpus") is None:
        extra["train_gpus"] = 0  # the Ray cluster holds the GPUs; the train step only submits and waits
    return {"config": document, "model_name": model_name, **{k: v for k, v in extra.items() if v is not None}}


def check_step_parameters(model_name: str, extra: dict) -> None:
    """What each later step would refuse, refused before the first runs (a refusal mid-pipeline
    costs the training before it)."""
    import re

    from dreamloom.evaluation.evaluate import EvalSettings
    from dreamloom.registry.store import check_model_name

    check_model_name(model_name)
    images, steps = extra.get("eval_images_per_prompt"), extra.get("eval_steps")
    EvalSettings(
        subject="check",
        images_per_prompt=EvalSettings.images_per_prompt if images is None else int(images),
        steps=EvalSettings.steps if steps is None else int(steps),
    )
    url = extra.get("triton_url") or ""
    if url and not re.fullmatch(r"(https?://)?[A-Za-z0-9.-]+:\d{1,5}", url):
        raise DreamloomError(f"triton_url {url!r} is not HOST:PORT (e.g. dreamloom-triton:8000)")


LOCAL_RUN_LOG = "run.log"


def run_local(arguments: dict, root: Path | None = None, pipeline=None, verbose: bool = False) -> Path:
    """Run every step of ``pipeline`` (default: personalize) in subprocesses of this Python
    (offline); returns the folder of their outputs. Unless ``verbose``, KFP's own output (each
    step's executor input as JSON, its outputs) goes to ``run.log`` in that folder and this
    prints one line per step and the steps' progress and errors."""
    from kfp import local

    from dreamloom.settings import apply_quiet_defaults, tracking_uri, work_dir
    from pipelines.personalize import personalize

    apply_quiet_defaults()
    root = Path(root or work_dir() / "kfp-local")
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    # Every step (a subprocess) must see this process's work folder and MLflow store.
    with _environment(DREAMLOOM_HOME=str(work_dir()), MLFLOW_TRACKING_URI=tracking_uri()), _print_kept():
        if verbose:
            (pipeline or personalize)(**arguments)
        else:
            with _step_lines(root / LOCAL_RUN_LOG) as steps:
                try:
                    (pipeline or personalize)(**arguments)
                except RuntimeError as failed:  # KFP's "Pipeline ... finished with status FAILURE"
                    raise DreamloomError(
                        f"step {steps.failed or '?'} failed: {_plain(str(failed)).splitlines()[0]}; "
                        f"its output is in {root / LOCAL_RUN_LOG}"
                    ) from None
    return root


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([\w-]+)'")
_FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
# What the steps print for people: progress bars and errors (a Ray worker's lines carry its prefix).
_PASSED_THROUGH = re.compile(r"^\s*(\([^)]*\)\s*)?(\[[\w .-]+\] |dreamloom: )")


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


class _StepLines:
    """A stdout for KFP's local runner: everything to the log file; to the terminal, one line per
    finished step, and the lines the steps themselves print for people (progress bars, errors)."""

    def __init__(self, log, terminal):
        self.log, self.terminal = log, terminal
        self.started: dict[str, float] = {}
        self.failed: str | None = None
        self._partial = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._show(_plain(line))
        return len(text)

    def _show(self, line: str) -> None:
        if started := _STARTED.search(line):
            self.started[started[1]] = time.monotonic()
        elif finished := _FINISHED.search(line):
            name, status = finished[1], finished[2]
            seconds = time.monotonic() - self.started.get(name, time.monotonic())
            if status != "SUCCESS":
                self.failed = name
            self._tell(f"[pipeline] {name}: {status.lower()} ({seconds:.0f} s)")
        elif _PASSED_THROUGH.match(line):
            self._tell(f"  {line.strip()}")

    def _tell(self, line: str) -> None:
        # Written, not print()ed: KFP swaps builtins.print for an indenting one while a step runs.
        self.terminal.write(line + "\n")
        self.terminal.flush()

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False


@contextmanager
def _step_lines(log_file: Path):
    with open(log_file, "a", encoding="utf-8") as log:
        lines = _StepLines(log, sys.stdout)
        with contextlib.redirect_stdout(lines):
            yield lines


@contextmanager
def _print_kept():
    """This process's print() as it was, whatever KFP's runner (which swaps in an indenting one
    per step) or a thread printing meanwhile left behind."""
    kept = builtins.print
    try:
        yield
    finally:
        builtins.print = kept


@contextmanager
def _environment(**values: str):
    """``values`` in os.environ for the block only (the steps inherit them; callers keep theirs)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def upload(host: str, version_name: str, package: Path | None = None, release: ReleaseNames = DEFAULT_RELEASE) -> str:
    """Upload the personalize pipeline compiled for ``release`` to a KFP backend, as the release's
    pipeline (``<release>-personalize``) if it is new, else as a new version of it."""
    import kfp

    client = kfp.Client(host=host)
    name = release.pipeline("personalize")
    with _compiled_for(release, package) as compiled:
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            return client.upload_pipeline(str(compiled), name, description=f"dreamloom {version_name}").pipeline_id
        return client.upload_pipeline_version(str(compiled), version_name, pipeline_id=pipeline_id).pipeline_version_id


def submit(
    host: str,
    arguments: dict,
    experiment: str,
    package: Path | None = None,
    version_name: str | None = None,
    service_account: str | None = None,
    release: ReleaseNames = DEFAULT_RELEASE,
) -> str:
    """Start a run on a KFP backend (uploading the compiled pipeline as a version first, if named),
    as the release's pipeline account unless ``service_account`` names another ('' for KFP's)."""
    import kfp

    if service_account is None:
        service_account = release.pipeline_account  # the chart's: may create and watch RayJobs
    with _compiled_for(release, package) as compiled:
        if version_name:
            upload(host, version_name, compiled, release)
        run = kfp.Client(host=host).create_run_from_pipeline_package(
            str(compiled), arguments=arguments, experiment_name=experiment, service_account=service_account or None
        )
    return run.run_id


@contextmanager
def _compiled_for(release: ReleaseNames, package: Path | None):
    """``package`` as given, the checked-in YAML for the default release, else one compiled now."""
    from pipelines import compile_pipeline
    from pipelines.personalize import COMPILED

    if package is not None:
        yield Path(package)
    elif release == DEFAULT_RELEASE:
        yield COMPILED
    else:
        with tempfile.TemporaryDirectory() as folder:
            yield compile_pipeline("personalize", Path(folder) / "personalize.yaml", release)
