"""Backends behind one protocol.

What belongs here: the :class:`~adapters.base.Adapter` protocol, the optional
capabilities (:mod:`adapters.capabilities`), the registry of kinds
(:mod:`adapters.registry`), and one module per backend kind (``sim``, ``devices``,
``slurm``; the ``kubernetes`` package holds the ``kubernetes`` and ``kubeedge`` kinds).
Each adapter maps its backend's states to :class:`continuum.model.RunState` through one
table. Only adapters import a backend SDK (paho on the server side, the Kubernetes
client, the Slurm REST client). What does not belong: placement decisions, the store,
the HTTP API.
"""
