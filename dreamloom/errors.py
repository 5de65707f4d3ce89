"""Errors a user can act on.

Anything raised as a ``DreamloomError`` is printed by the CLI as a plain message (no traceback):
the message itself must say what is wrong and what to do about it.
"""

from __future__ import annotations


class DreamloomError(Exception):
    """A problem with the user's input or environment, explained in the message."""


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
