""":class:`Tier`, where in the continuum a node sits — a plain enum, without pydantic, so
that the edge agent can name its tier without loading the server's model library
(issue 16's lean agent; :mod:`continuum.model` re-exports it)."""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    """Where in the continuum a node sits, nearest the data first."""

    device = "device"
    edge = "edge"
    cloud = "cloud"
    hpc = "hpc"
