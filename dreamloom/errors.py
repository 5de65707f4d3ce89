"""Errors a user can act on, and the exit codes the command line gives them.

Anything raised as a ``DreamloomError`` is printed by the CLI as a plain message (no traceback):
the message itself must say what is wrong and what to do about it. The exit code says which
kind of problem it was, so a script or a pipeline step can tell them apart:

- 0: done
- 1: refused by a gate or a check (a promotion the gate refused, a diverged run, failed requests)
- 2: usage: unknown command or flag, a flag's value of the wrong type (argparse's own code)
- 3: input problems: a bad config, images, artifact or request
- 4: a service unreachable (MLflow, Triton, a Ray cluster); the message names the URL
"""

from __future__ import annotations

import re
from typing import ClassVar

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_UNREACHABLE = 4


class DreamloomError(Exception):
    """A problem with the user's input or environment, explained in the message."""

    exit_code: ClassVar[int] = EXIT_INPUT


class Refused(DreamloomError):
    """A gate or a check said no: the input was well-formed, the result did not pass."""

    exit_code = EXIT_REFUSED


class ServiceUnreachable(DreamloomError):
    """A service the command needs did not answer; ``url`` is where it was looked for."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, service: str, url: str, cause: str, fix: str):
        self.url = url
        super().__init__(f"could not reach {service} at {url} ({cause}); {fix}")


class ConfigError(DreamloomError):
    """The run configuration is invalid."""


class DataValidationError(DreamloomError):
    """The training images are unusable; ``problems`` lists every offending file."""

    def __init__(self, folder: str, problems: list[tuple[str, str]]):
        self.folder = folder
        self.problems = problems
        lines = [f"  - {name}: {reason}" for name, reason in problems]
        super().__init__(
            f"{len(problems)} problem(s) in the training data at {folder}; nothing was written:\n" + "\n".join(lines)
        )


class ArtifactError(DreamloomError):
    """An artifact folder is missing, incomplete or not loadable."""


# Statuses of a service that may answer if asked again: overloaded, unavailable, timed out.
_TRANSIENT_STATUSES = {"429", "500", "502", "503", "504", "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}
_TRANSIENT_NAMES = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError", "ProtocolError"}


def is_transient(error: BaseException) -> bool:
    """Whether asking again may succeed: a service unreachable, overloaded or briefly unavailable.
    The platform's own refusals (bad input, a gate that says no) are never transient."""
    if isinstance(error, (ConnectionError, TimeoutError)) or type(error).__name__ in _TRANSIENT_NAMES:
        return True
    status = getattr(error, "status", None)  # a ServingError: Triton's HTTP or gRPC status
    if status is not None and str(status) in _TRANSIENT_STATUSES:
        return True
    http_status = getattr(error, "get_http_status_code", None)  # an MlflowException
    return callable(http_status) and str(http_status()) in _TRANSIENT_STATUSES


def as_user_error(error: BaseException) -> DreamloomError | None:
    """The error as the user should see it, with its exit code: dreamloom's own, MLflow refusing
    the credentials, MLflow not answering; None for a bug (its traceback is the report)."""
    if isinstance(error, DreamloomError):
        return error
    if refused := credentials_refused(error):
        return DreamloomError(refused)
    if type(error).__name__ == "MlflowException" and _CONNECTION_FAILED.search(str(error)):
        asked = _REQUEST_URL.search(str(error))  # the server MLflow tried, as its message names it
        url = re.sub(r"//[^/@\s]+@", "//***@", asked[1]) if asked else "MLFLOW_TRACKING_URI"
        fix = "start it (`mlflow server`), or set MLFLOW_TRACKING_URI to where it runs"
        return ServiceUnreachable("MLflow", url, "connection refused", fix)
    return None


_CONNECTION_FAILED = re.compile(r"Max retries exceeded|Failed to establish a new connection|Connection refused")
_REQUEST_URL = re.compile(r"API request to (https?://[^/\s]+)")


def credentials_refused(error: BaseException) -> str | None:
    """A message that names the fix when MLflow refused the credentials, else None."""
    code = getattr(error, "error_code", None)
    if code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return None
    what = "no valid credentials were sent" if code == "UNAUTHENTICATED" else "this user may not do that"
    return (
        f"MLflow refused the request ({what}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
        "(in a cluster they come from the dreamloom-mlflow Secret)"
    )
