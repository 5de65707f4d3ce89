"""How a pipeline step runs its work: KFP cannot tell a user's error from a service's hiccup, so
steps retry the transient failures themselves and end at once on the platform's own refusals.

A refusal (``DreamloomError``: bad input, a gate that says no) would fail the same way again: the
step stops with its message and no traceback. A transient failure (a service unreachable, 429 or
5xx, Triton UNAVAILABLE) is retried with backoff. The pipelines set no KFP retries.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

from dreamloom.errors import as_user_error, is_transient

T = TypeVar("T")


def run_step(work: Callable[[], T], attempts: int = 4, first_wait_s: float = 15.0) -> T:
    """``work()``, again after 15, 30 and 60 s while it fails transiently."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except Exception as error:
            if attempt < attempts and is_transient(error):
                wait = first_wait_s * 2 ** (attempt - 1)
                print(f"dreamloom: transient failure ({error}); trying again in {wait:.0f} s", file=sys.stderr)
                time.sleep(wait)
                continue
            if known := as_user_error(error):
                print(f"dreamloom: error: {known}", file=sys.stderr)
                raise SystemExit(known.exit_code) from None
            raise
    raise AssertionError("unreachable")
