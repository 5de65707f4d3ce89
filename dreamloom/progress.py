"""Progress of long work as log lines that carry a bar: readable in a terminal, in CI, in
Kubeflow and Ray job logs alike (Ray forwards worker output line by line, so carriage-return
bars would arrive as noise)."""

from __future__ import annotations

import contextlib
import sys
import time

BAR_WIDTH = 20


class Progress:
    """Prints ``[train] ████░░░░ 12/60 (20%) loss 1.08 lr 0.0001 | 2.9 it/s, ETA 16s`` about every
    5% of the work or every 10 s, and always at the end."""

    def __init__(self, total: int, description: str, initial: int = 0, min_interval_s: float = 10.0):
        self.total, self.description = total, description
        self.done = self._initial = initial
        self._started = time.perf_counter()
        self._last_line = self._started
        self._every = max(1, total // 20)
        self._min_interval_s = min_interval_s

    def update(self, steps: int = 1, **values: float) -> None:
        self.done += steps
        now = time.perf_counter()
        due = self.done >= self.total or self.done % self._every == 0 or now - self._last_line > self._min_interval_s
        if due:
            self._last_line = now
            print(self.line(**values), flush=True)

    def line(self, **values: float) -> str:
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = round(fraction * BAR_WIDTH)
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        summary = " ".join(f"{key} {value:.4g}" for key, value in values.items())
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        timing = f"{rate:.2f} it/s, ETA {eta:.0f}s" if self.done < self.total else f"{rate:.2f} it/s, done"
        return f"[{self.description}] {bar} {self.done}/{self.total} ({fraction:.0%}) {summary} | {timing}".replace(
            "  ", " "
        )

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._started
        return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0


class StatusLine:
    """A status that changes while something is awaited (``waiting for Triton: 12 s``): rewritten
    in place on a terminal; anywhere else (a log file, CI, a pipeline step) a new line at most
    every ``interval_s`` and the latest at the end, so a log holds a few lines, not one per poll
    joined by carriage returns."""

    def __init__(self, interval_s: float = 10.0, stream=None):
        self.stream = stream or sys.stderr
        self.on_terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s
        self._printed_at = float("-inf")
        self._unprinted: str | None = None
        self._shown = False

    def show(self, text: str) -> None:
        self._shown = True
        if self.on_terminal:
            print(f"\r{text}", end="", file=self.stream, flush=True)
        elif time.monotonic() - self._printed_at >= self.interval_s:
            print(text, file=self.stream, flush=True)
            self._printed_at, self._unprinted = time.monotonic(), None
        else:
            self._unprinted = text

    def close(self) -> None:
        if self.on_terminal and self._shown:
            print(file=self.stream, flush=True)
        elif self._unprinted is not None:
            print(self._unprinted, file=self.stream, flush=True)
        self._shown, self._unprinted = False, None


class PhaseClock:
    """Seconds spent in each named phase of a run, summed over repeats, in the order first seen:
    what a run's fixed cost is made of (``with clock.phase("ray start"): ...``)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def summary(self) -> str:
        """``82.4 s: checks 1.9 s, Ray start 19.8 s, ...``"""
        parts = ", ".join(f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in self.seconds.items())
        return f"{self.total:.1f} s: {parts}"
