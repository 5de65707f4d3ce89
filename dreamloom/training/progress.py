"""Progress of long work: a bar with loss and it/s in a terminal, plain lines in logs."""

from __future__ import annotations

import sys
import time


class Progress:
    """Shows steps done out of ``total``.

    ``style`` is ``bar`` (interactive terminals; inside a Ray worker the bar is drawn by the
    driver through ``ray.experimental.tqdm_ray``) or ``lines`` (CI, Kubeflow and Ray job logs:
    one line about every 5% of the run or every 10 s).
    """

    def __init__(self, total: int, description: str, style: str = "lines", initial: int = 0, in_ray: bool = False):
        self.total, self.description, self.style = total, description, style
        self.done = initial
        self._started = time.perf_counter()
        self._last_line = 0.0
        self._line_every = max(1, total // 20)
        self._bar = None
        if style == "bar":
            if in_ray:
                from ray.experimental.tqdm_ray import tqdm
            else:
                from tqdm import tqdm
            self._bar = tqdm(total=total, desc=description)
            self._bar.update(initial)
        self._initial = initial

    def update(self, steps: int = 1, **values: float) -> None:
        self.done += steps
        summary = " ".join(f"{key} {value:.4g}" for key, value in values.items())
        if self._bar is not None:
            self._bar.set_description(f"{self.description} {summary}".strip())
            self._bar.update(steps)
            return
        now = time.perf_counter()
        if self.done == self.total or self.done % self._line_every == 0 or now - self._last_line > 10:
            self._last_line = now
            print(f"[{self.description}] {self.done}/{self.total} {summary} {self.rate:.2f} it/s", flush=True)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._started
        return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def default_style() -> str:
    return "bar" if sys.stderr.isatty() else "lines"
