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
