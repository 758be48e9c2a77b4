"""The applier's per-batch placement snapshot (``Applier._snapshot``): a copy of the one
kept while the federation's ``inventory_generation`` and the network's ``version`` are
unchanged, else built anew — and placements on it identical to those on a snapshot
built fresh from ``placeable_nodes`` each batch, across inventory changes of every kind
(free capacity, a node added or removed, a node not ready, a site draining, a label, a
measured RTT)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterContext
from continuum.model import Node, Resources, SiteSpec, Topology
from control_plane.apply import Applier
from control_plane.artifacts import LocalArtifactStore
from control_plane.federation import Federation
from control_plane.reconciler import Reconciler
from control_plane.settings import Settings
from control_plane.store import Store
from monitoring.metrics import ControlPlaneMetrics
from monitoring.topology import TopologyModel
from placement import Snapshot, default_framework, plan
from placement.batch import ClassCachedPredictor, node_classes
from placement.learned import LearnedPredictor
from placement.plugins.load import with_load
from tests.placement.placement_factories import request, task


def sim_site(name: str, location: str) -> SiteSpec:
    return SiteSpec.model_validate({
        "name": name, "kind": "sim", "tier": "cloud", "location": location, "config": {
            "nodes": [{"name": "vm", "count": 4, "cpu": 8, "memory": "32Gi",
                       "power": {"idleWatts": 10, "maxWatts": 40}}]}})


class World:
    def __init__(self, tmp_path: Path, database_url: str) -> None:
        settings = Settings(state_dir=tmp_path, database_url=database_url)
        self.store = Store(settings.db_url)
        metrics = ControlPlaneMetrics()
        artifacts = LocalArtifactStore(settings.artifact_dir, self.store)
        self.federation = Federation(
            self.store, AdapterContext(artifacts=artifacts, state_dir=tmp_path), settings,
            metrics)
        self.network = TopologyModel(Topology())
        self.applier: Applier = Reconciler(self.store, self.federation, settings, metrics,
                                           self.network).applier
        self.inventories: dict[str, list[Node]] = {}
        for name, loc in (("a", "munich"), ("b", "frankfurt")):
            rt = self.federation.register(sim_site(name, loc))
            self.inventories[name] = list(rt.nodes)
            rt.adapter.inventory = (  # type: ignore[method-assign]
                lambda name=name: list(self.inventories[name]))

    def change(self, site: str, edit: Callable[[list[Node]], list[Node]]) -> None:
        """New node objects for ``site`` (as an adapter hands them out), then a refresh."""
        self.inventories[site] = edit(self.inventories[site])
        self.federation.refresh(1.0, force=True)


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    w = World(tmp_path, database_url)
    yield w
    w.federation.close()
    w.store.close()


def _set(nodes: list[Node], i: int, **update: Any) -> list[Node]:
    return [n.model_copy(update=update) if k == i else n for k, n in enumerate(nodes)]


def _batch(k: int) -> list[Any]:
    return [request(task(f"t{k}-{i}", cpu=1 + i % 3), key=f"{k}-{i}") for i in range(6)] + [
        request(task(f"t{k}-lab", cpu=1, labels={"disk": "ssd"}), key=f"{k}-lab")]


def _wire(outcomes: list[Any]) -> list[Any]:
    return [(o.key, o.decision.wire() if o.decision else None, o.reason) for o in outcomes]


CHANGES: list[tuple[str, Callable[[World], None] | None]] = [
    ("unchanged", None),
    ("free capacity", lambda w: w.change("a", lambda ns: _set(
        ns, 0, free=Resources(cpu=1.5, memory=2**30, gpu=0)))),
    ("node added", lambda w: w.change("a", lambda ns: [*ns, ns[1].model_copy(update={
        "id": "a/vm-new", "name": "vm-new", "free": Resources(cpu=8, memory=2**34, gpu=0)})])),
    ("node removed", lambda w: w.change("b", lambda ns: ns[1:])),
    ("node not ready", lambda w: w.change("b", lambda ns: _set(ns, 0, ready=False))),
    ("site draining", lambda w: w.federation.drain("b")),
    ("label", lambda w: w.change("a", lambda ns: _set(ns, 2, labels={"disk": "ssd"}))),
    ("measured rtt", lambda w: w.network.observe("munich", "frankfurt", 80.0)),
    ("site resumed", lambda w: w.federation.drain("b", False)),
    ("unchanged again", None),
]


def test_cached_snapshots_place_as_fresh_ones_across_inventory_changes(world: World) -> None:
    fw = with_load(default_framework(ClassCachedPredictor(LearnedPredictor(None))))
    builds = 0
    seen_label = False
    for k, (what, change) in enumerate(CHANGES):
        if change is not None:
            change(world)
        for rep in range(2):  # the second batch of a step reuses what the first built
            cached = world.applier._snapshot(float(k))
            fresh = Snapshot(nodes=world.federation.placeable_nodes(draining=True),
                             network=world.network, now=float(k))
            assert cached.ids == fresh.ids, what
            got = _wire(plan(_batch(k), cached, fw))
            assert got == _wire(plan(_batch(k), fresh, fw)), (what, rep)
            seen_label = seen_label or any(d is not None and d["node"] == "a/vm-2"
                                           for key, d, _ in got if key.endswith("lab"))
        builds += change is not None or k == 0
        assert (world.applier.snapshots.builds, world.applier.snapshots.reuses) == (
            builds, 2 * (k + 1) - builds), what
    assert seen_label  # the label change reached the cached path


def test_every_inventory_change_moves_the_generation(world: World) -> None:
    fed = world.federation
    seen = [fed.inventory_generation]

    def moved() -> bool:
        seen.append(fed.inventory_generation)
        return seen[-1] > seen[-2]

    assert not moved()
    fed.refresh(2.0)  # within the interval: nothing refreshed
    assert not moved()
    fed.refresh(2.0, force=True)
    assert moved()
    fed.drain("a")
    assert moved()
    fed.drain("a", False)
    assert moved()
    fed.register(sim_site("c", "munich"))
    assert moved()
    fed.remove("c")
    assert moved()
    assert not moved()


def test_a_changed_inventory_is_a_new_snapshot_and_new_node_classes(world: World) -> None:
    first = world.applier._snapshot(0.0)
    again = world.applier._snapshot(1.0)
    assert again is not first and again.now == 1.0
    assert again.nodes is first.nodes and node_classes(again) is node_classes(first)
    assert again.free_cpu is not first.free_cpu
    first.assume(0, Resources(cpu=3, memory=0, gpu=0))  # a batch's deduction stays its own
    assert world.applier._snapshot(1.0).free_cpu[0] == again.free_cpu[0]
    world.change("a", lambda ns: _set(ns, 0, free=Resources(cpu=2, memory=2**30, gpu=0)))
    after = world.applier._snapshot(2.0)
    assert after.nodes is not first.nodes and after.free_cpu[after.index["a/vm-0"]] == 2
    assert node_classes(after) is not node_classes(first)
