"""The base of every settings model: strict (an unknown field is an error, never ignored), numbers
finite (``.inf`` and ``.nan`` pass a ``ge=0`` bound, and a weight decay of infinity trains to NaN),
and checked again on assignment. The run config's sections and each method's section derive from it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
