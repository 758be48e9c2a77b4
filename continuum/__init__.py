"""Continuum's shared vocabulary: the domain model, units, errors and settings.

What belongs here: pydantic models every other package speaks (Site, Node, Workflow,
Task, Run, Placement, Topology), the parsing of Kubernetes-style quantities and
durations, and the typed error family. What does not: anything that talks to a
backend, a broker, a database or the network. This package imports nothing of ours.
"""

__version__ = "0.1.0"
