"""The promotion gate: may a challenger replace the champion?

Each gated metric (higher is better) must reach its absolute threshold, if one is set, and must
not trail the champion by more than the tolerance. Numbers from different encoders are never
compared. Every check says what it compared and by how much it passed or failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dreamloom.errors import ConfigError


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics: list[str] = Field(default_factory=lambda: ["clip_t", "clip_i", "dino"], min_length=1)
    thresholds: dict[str, float] = Field(default_factory=dict, description="Absolute minimums per metric")
    tolerance: float = Field(0.01, description="How far below the champion a metric may be (negative: must beat it)")

    @classmethod
    def load(cls, path: Path | None) -> GateConfig:
        if path is None:
            return cls()
        try:
            document = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"gate config {path}: {exc}") from None
        return cls.parse(document, str(path))

    @classmethod
    def parse(cls, document: dict, source: str = "gate config") -> GateConfig:
        try:
            return cls.model_validate(document or {})
        except ValidationError as exc:
            raise ConfigError(f"{source}: {exc}") from None


@dataclass(frozen=True)
class Check:
    metric: str
    passed: bool
    message: str


@dataclass(frozen=True)
class Evaluated:
    """A version's metrics and the encoders that produced them."""

    version: str
    metrics: dict[str, float]
    encoders: tuple[str, str]


def gate(challenger: Evaluated, champion: Evaluated | None, config: GateConfig) -> list[Check]:
    checks = []
    comparable = champion is not None and champion.encoders == challenger.encoders
    if champion is not None and not comparable:
        checks.append(
            Check(
                "encoders",
                False,
                f"version {challenger.version} was evaluated with {challenger.encoders}, the champion "
                f"(version {champion.version}) with {champion.encoders}; evaluate both with the same encoders",
            )
        )
    for metric in config.metrics:
        value = challenger.metrics.get(metric)
        if value is None:
            checks.append(
                Check(metric, False, f"{metric}: version {challenger.version} has no value; evaluate it first")
            )
            continue
        threshold = config.thresholds.get(metric)
        if threshold is not None:
            gap = value - threshold
            verdict = "reaches" if gap >= 0 else f"is {-gap:.4f} below"
            checks.append(Check(metric, gap >= 0, f"{metric} {value:.4f} {verdict} the threshold {threshold:.4f}"))
        if comparable and metric in champion.metrics:
            floor = champion.metrics[metric] - config.tolerance
            gap = value - floor
            best = champion.metrics[metric]
            reference = f"the champion's {best:.4f} (version {champion.version}, tolerance {config.tolerance:g})"
            verdict = "keeps up with" if gap >= 0 else f"is {-gap:.4f} below"
            checks.append(Check(metric, gap >= 0, f"{metric} {value:.4f} {verdict} {reference}"))
    return checks
