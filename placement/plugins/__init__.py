"""Placement plugins, one per file: a ``NAME`` constant, reason constants, one class.

Filters: :mod:`constraints` (ready, tiers, arch, labels, sites, taints, container
runtime), :mod:`resources` (cpu, memory, gpu against free), :mod:`latency` (SLO RTT).
Scores: :mod:`completion` (time), :mod:`latency` (latency), :mod:`energy` (energy),
:mod:`locality` (data), :mod:`fragmentation` (GPU fragmentation, FGD). Plugins read
predictions via :func:`placement.predict.predictions` and never import control_plane,
adapters or edge_agent.
"""
