"""Fixtures for the Kubernetes/KubeEdge adapter tests: the API-server stand-in and adapters.

``apiserver`` is a fresh :class:`~tests.adapters.kubernetes.apiserver.ApiServer` per test
(two nodes: ``cloud-1`` 8 cores/32 GiB/1 GPU and ``cloud-2`` 4 cores/16 GiB); at teardown
it fails the test if any object it received was invalid against the 1.30 schemas.
``make_adapter(kind, **config)`` builds an adapter for it (closed at teardown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterContext
from adapters.kubernetes import KubeEdgeAdapter, KubernetesAdapter
from continuum.model import SiteKind, SiteSpec
from tests.adapters.kubernetes.apiserver import ApiServer
from tests.helpers import NoArtifacts, Wakes


@pytest.fixture
def apiserver() -> Iterator[ApiServer]:
    server = ApiServer().start()
    server.add_node("cloud-1", cpu="8", memory="32Gi", gpu=1,
                    labels={"node.kubernetes.io/instance-type": "g4dn.2xlarge"})
    server.add_node("cloud-2", cpu="4", memory="16Gi")
    yield server
    server.stop()
    assert not server.rejected, f"the stand-in rejected invalid objects: {server.rejected}"


AdapterFactory = Callable[..., KubernetesAdapter]


def build_adapter(kind: str, name: str, location: str, config: dict[str, Any],
                  state_dir: Path, wake: Wakes | None = None) -> KubernetesAdapter:
    """A ``kind`` (``kubernetes``/``kubeedge``) adapter for site ``name``; the caller
    closes it."""
    site = SiteSpec(name=name, kind=SiteKind(kind), location=location, config=config)
    ctx = AdapterContext(artifacts=NoArtifacts(), state_dir=state_dir, wake=wake or Wakes())
    return KubeEdgeAdapter(site, ctx) if kind == "kubeedge" else KubernetesAdapter(site, ctx)


@pytest.fixture
def make_adapter(apiserver: ApiServer, tmp_path: Path) -> Iterator[AdapterFactory]:
    made: list[KubernetesAdapter] = []

    def make(kind: str = "kubernetes", name: str = "k8s", wake: Wakes | None = None,
             **config: Any) -> KubernetesAdapter:
        config.setdefault("kubeconfig", apiserver.kubeconfig())
        config.setdefault("watchTimeout", 2)
        adapter = build_adapter(kind, name, "frankfurt", config, tmp_path, wake)
        made.append(adapter)
        return adapter

    yield make
    for a in made:
        a.close()
