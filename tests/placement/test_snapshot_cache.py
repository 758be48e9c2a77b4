"""SnapshotCache: a copy of the kept snapshot while the caller's key is unchanged, a new
build when the key, the network object or ``gpu_unit`` changes (or the key is None); the
copies' free arrays are their own and start as built, their memo is shared."""

from __future__ import annotations

from continuum.model import Node, Resources
from placement import SnapshotCache, plan
from placement.batch import node_classes
from tests.placement.placement_factories import network, node, request, snapshot, task


def _nodes() -> list[Node]:
    return [node("s/a", cpu=4), node("s/b", cpu=8, free=(2.0, 2**30, 0))]


def test_one_key_one_build_and_pristine_copies() -> None:
    nodes, net, cache = _nodes(), network(), SnapshotCache()
    calls: list[int] = []

    def listing() -> list[Node]:
        calls.append(1)
        return nodes

    first = cache.get(7, listing, net, 1.0)
    plan([request(task(cpu=3), key="x")], first)  # deducts from first's free arrays only
    second = cache.get(7, listing, net, 2.0)
    assert len(calls) == 1 and (cache.builds, cache.reuses) == (1, 1)
    assert second.now == 2.0 and second.nodes is nodes
    assert second.free_cpu.tolist() == [4.0, 2.0] and first.free_cpu.tolist() == [1.0, 2.0]
    assert node_classes(second) is node_classes(first)


def test_a_new_key_network_or_gpu_unit_builds_again() -> None:
    nodes, cache = _nodes(), SnapshotCache()
    net = network()
    base = cache.get(1, lambda: nodes, net, 0.0)
    changed = [nodes[0], nodes[1].model_copy(update={"free": Resources(cpu=8, memory=0, gpu=0)})]
    after = cache.get(2, lambda: changed, net, 0.0)
    assert after.free_cpu.tolist() == [4.0, 8.0] and node_classes(after) is not node_classes(base)
    cache.get(2, lambda: changed, network(), 0.0)  # another network object
    cache.get(2, lambda: changed, network(), 0.0, gpu_unit=1000)
    assert cache.builds == 4 and cache.reuses == 0


def test_no_key_never_reuses_and_clear_forgets() -> None:
    nodes, net, cache = _nodes(), network(), SnapshotCache()
    cache.get(None, lambda: nodes, net, 0.0)
    cache.get(None, lambda: nodes, net, 0.0)
    cache.get(3, lambda: nodes, net, 0.0)
    cache.clear()
    cache.get(3, lambda: nodes, net, 0.0)
    assert (cache.builds, cache.reuses) == (4, 0)


def test_a_copy_made_before_any_memo_use_shares_the_memo() -> None:
    snap = snapshot(_nodes())
    early = snap.copy()
    assert node_classes(early) is node_classes(snap)


def test_a_planner_uses_the_snapshots_node_classes_unless_inputs_have_cached_copies() -> None:
    from placement import DataSource, Planner

    snap = snapshot([node("s/a"), node("s/b")])  # alike: one class
    assert Planner(snap).assigner.classes is node_classes(snap)
    assert node_classes(snap).count == 1
    src = DataSource(bytes=10, locations=["munich"], nodes=["s/b"])
    own = Planner(snap, requests=[request(task(), sources=[src])]).assigner.classes
    assert own is not None and own.count == 2  # s/b holds a copy: a class of its own
