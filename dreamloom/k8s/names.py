"""The names of the objects a Helm release of the chart creates, derived as the chart derives them
(``charts/dreamloom/templates/_helpers.tpl``), so that two releases in one namespace share no
claim, ConfigMap or service account, and the pipelines and RayJobs compiled for a release mount
that release's objects.

The Secrets holding credentials are not among them: the operator creates those before installing
(``dreamloom.k8s.secrets``), and every release in a namespace reads the same ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dreamloom.errors import DreamloomError

CHART_NAME = "dreamloom"
MAX_FULLNAME = 63  # the chart truncates to a DNS label
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class ReleaseNames:
    """A release's object names, from the chart's ``dreamloom.fullname`` (``dreamloom`` for a
    release named ``dreamloom``, ``brand-a-dreamloom`` for ``brand-a``)."""

    fullname: str = CHART_NAME

    def __post_init__(self) -> None:
        if len(self.fullname) > MAX_FULLNAME or not _DNS_LABEL.fullmatch(self.fullname):
            raise DreamloomError(
                f"{self.fullname!r} is not a release's full name: use lowercase letters, digits and '-' "
                f"(at most {MAX_FULLNAME}, starting and ending with a letter or digit), as Helm does"
            )

    @classmethod
    def of_release(cls, release: str) -> ReleaseNames:
        """The names for ``helm install RELEASE`` (use ``ReleaseNames(FULLNAME)`` where the release
        sets ``fullnameOverride``)."""
        fullname = release if CHART_NAME in release else f"{release}-{CHART_NAME}"
        return cls(fullname[:MAX_FULLNAME].rstrip("-"))

    @property
    def data_claim(self) -> str:
        """Training data, checkpoints and staged jobs: the train step and every Ray pod mount it."""
        return f"{self.fullname}-data"

    @property
    def serving_claim(self) -> str:
        """Triton's model repository and the adapters it serves: the deploy steps mount it."""
        return f"{self.fullname}-serving"

    @property
    def training_settings(self) -> str:
        """The ConfigMap with the RayJob settings (``dreamloom.k8s.rayjob.RayJobSettings``)."""
        return f"{self.fullname}-training"

    @property
    def pipeline_account(self) -> str:
        """The service account pipeline runs use: it may create and watch RayJobs."""
        return f"{self.fullname}-pipeline"

    @property
    def trainer_account(self) -> str:
        """The Ray pods' service account (no API permissions)."""
        return f"{self.fullname}-trainer"

    def pipeline(self, pipeline: str) -> str:
        """A pipeline's name on the KFP backend (``dreamloom-personalize`` for the default release)."""
        return f"{self.fullname}-{pipeline.replace('_', '-')}"


DEFAULT_RELEASE = ReleaseNames()
