"""The few model types the edge agent shares with the control plane: the base
:class:`Model` (camelCase on the wire), :class:`Tier` and :class:`PowerProfile`.

Kept apart from :mod:`continuum.model` (which re-exports them) so that the agent, which
needs only these, does not build the schemas of every server model: importing
``continuum.model`` costs 12.5 MB of resident memory, this module under 1 MB
(``bench/agent_rss.sh``, issue 16's lean agent)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class Model(BaseModel):
    """Base: camelCase aliases on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        use_enum_values=False,
    )

    def wire(self) -> dict[str, Any]:
        """JSON-ready dict with camelCase keys (what the API returns)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Tier(StrEnum):
    """Where in the continuum a node sits, nearest the data first."""

    device = "device"
    edge = "edge"
    cloud = "cloud"
    hpc = "hpc"


class PowerProfile(Model):
    """A node's linear power model: ``idle_watts`` at 0 % and ``max_watts`` at 100 % CPU.

    The linear idle→max model is from Fan, Weber & Barroso, "Power provisioning for a
    warehouse-sized computer", ISCA 2007. ``gpu_watts`` is each GPU's board power
    (TDP) when busy. ``source`` cites where the figures come from.
    """

    idle_watts: float = Field(ge=0)
    max_watts: float = Field(ge=0)
    gpu_watts: float = Field(default=0.0, ge=0)
    source: str = ""

    @model_validator(mode="after")
    def _max_above_idle(self) -> PowerProfile:
        if self.max_watts < self.idle_watts:
            raise ValueError(
                f"maxWatts ({self.max_watts}) must be >= idleWatts ({self.idle_watts})"
            )
        return self
