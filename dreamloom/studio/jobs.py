"""Long work the studio starts (a training run and its registration, a KFP run, a deploy) as child
processes running the dreamloom CLI, one stage after another.

The studio stays responsive while they run; what a job prints is what a terminal user would see;
cancelling interrupts the stage as Ctrl-C would (the launchers then stop their Ray job or RayJob),
and stops its whole process group if it does not exit in time. A job's view (``JobView``) is read
from the lines the stages print: progress bars, the MLflow run, the last error.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

# What dreamloom.progress.Progress prints: "[train] ████░░ 12/60 (20%) loss 1.08 lr 0.0001 | 2.9 it/s, ETA 16s"
PROGRESS_LINE = re.compile(
    r"\[(?P<what>[^\]]+)\] [█░]+ (?P<done>\d+)/(?P<total>\d+) \(\d+%\)(?P<values>[^|]*)\|(?P<timing>.*)$"
)
ETA = re.compile(r"ETA (?P<seconds>\d+)s")
MLFLOW_RUN = re.compile(r"MLflow run (?P<run_id>[0-9a-f]{32})")
ERROR_LINE = re.compile(r"^dreamloom: error: (?P<message>.*)$")
KEPT_LINES = 400
CANCEL_GRACE_S = 20.0


@dataclass(frozen=True)
class Stage:
    name: str
    command: list[str]  # arguments after ``dreamloom``


@dataclass
class JobView:
    """What the studio shows of a job at one moment."""

    name: str
    status: str  # running, succeeded, failed, cancelled
    stage: str
    done: int = 0
    total: int = 0
    eta_s: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    run_id: str | None = None
    error: str | None = None
    log: str = ""

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def summary(self) -> str:
        if self.status == "failed":
            return f"**{self.name}: failed** in {self.stage}: {self.error or 'see the log'}"
        if self.status != "running":
            return f"**{self.name}: {self.status}**"
        line = f"**{self.name}: {self.stage}**"
        if self.total:
            line += f", step {self.done}/{self.total}"
        if self.losses:
            line += f", loss {self.losses[-1][1]:.4g}"
        if self.eta_s is not None:
            line += f", ETA {self.eta_s:.0f} s"
        return line


class Job:
    """Stages run in order in a thread; the first that fails (or a cancel) ends the job."""

    def __init__(self, name: str, stages: list[Stage], folder: Path, env: dict[str, str] | None = None):
        self.name, self.stages, self.folder = name, stages, folder
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._lines: deque[str] = deque(maxlen=KEPT_LINES)
        self._lock = threading.Lock()
        self._view = JobView(name, "running", stages[0].name)
        self._process: subprocess.Popen | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"studio-job-{name}", daemon=True)

    def start(self) -> Job:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def view(self) -> JobView:
        with self._lock:
            return replace(self._view, losses=list(self._view.losses), log="\n".join(self._lines))

    def wait(self, timeout_s: float | None = None) -> JobView:
        self._thread.join(timeout_s)
        return self.view()

    def cancel(self) -> None:
        """Interrupt the running stage as Ctrl-C would; its process group is stopped if it lingers."""
        self._cancelled.set()
        process = self._process
        if process is None or process.poll() is not None:
            return
        _signal_group(process, signal.SIGINT)
        threading.Thread(target=self._stop_after_grace, args=(process,), daemon=True).start()

    def _stop_after_grace(self, process: subprocess.Popen) -> None:
        try:
            process.wait(CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)

    def _run(self) -> None:
        log = (self.folder / "job.log").open("a", encoding="utf-8")
        try:
            for stage in self.stages:
                if self._cancelled.is_set():
                    break
                with self._lock:
                    self._view.stage, self._view.done, self._view.total, self._view.eta_s = stage.name, 0, 0, None
                self._add(f"$ dreamloom {' '.join(stage.command)}", log)
                if self._run_stage(stage, log) != 0:
                    break
            else:
                self._finish("succeeded")
                return
            self._finish("cancelled" if self._cancelled.is_set() else "failed")
        except Exception as exc:  # a job thread must always end in a state the page can show
            with self._lock:
                self._view.error = f"{type(exc).__name__}: {exc}"
            self._finish("failed")
        finally:
            log.close()

    def _run_stage(self, stage: Stage, log) -> int:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "dreamloom.cli", *stage.command],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,  # its own process group: a cancel reaches Ray's workers too
        )
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            self._add(raw.rstrip("\n"), log)
        return self._process.wait()

    def _add(self, line: str, log) -> None:
        log.write(line + "\n")
        log.flush()
        with self._lock:
            self._lines.append(line)
            read_line(self._view, line)

    def _finish(self, status: str) -> None:
        with self._lock:
            self._view.status = status
            if status == "succeeded":
                self._view.done = self._view.total


def read_line(view: JobView, line: str) -> None:
    """What one printed line tells about the job: progress, loss, ETA, its MLflow run, an error."""
    if progress := PROGRESS_LINE.search(line):
        view.done, view.total = int(progress["done"]), int(progress["total"])
        values = progress["values"].split()
        named = dict(zip(values[::2], values[1::2], strict=False))
        if "loss" in named and progress["what"] == "train":
            view.losses.append((view.done, float(named["loss"])))
        eta = ETA.search(progress["timing"])
        view.eta_s = float(eta["seconds"]) if eta else None
    if run := MLFLOW_RUN.search(line):
        view.run_id = view.run_id or run["run_id"]
    if error := ERROR_LINE.search(line):
        view.error = error["message"]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def job_folder(parent: Path, name: str) -> Path:
    """A new folder for one job: named for people, unique even for two started in the same second."""
    return parent / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
