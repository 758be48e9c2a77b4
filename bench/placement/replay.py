"""The control plane's live bench, its placement calls only: CPU time per decision of
:func:`placement.plan` as the reconciler calls it, without the server around it.

The sites and the work are those of :mod:`bench.control_plane.live`: ``--nodes`` sim
nodes (32 CPUs, 128 GiB) on two sim sites (:func:`bench.control_plane.server.sim_federation`,
their nodes from :meth:`adapters.sim.SimAdapter.inventory`), workflows of 10 tasks of
1 CPU and 256 MiB, no inputs, the default objective. The framework is the one
control_plane/models.py serves (``with_load(default_framework(ClassCachedPredictor(
LearnedPredictor(None))))``, fast mode); each batch is placed as ``_place_batch`` places
one: a :class:`~placement.Snapshot` of the inventory and ``plan(requests,
snapshot, framework)``, explanation included. The inventory does not change between
batches (the live bench's tasks finish within milliseconds, so the reconciler sees its
nodes almost empty). ``--snapshot cache`` (the default) takes the snapshot as the applier
does, from a :class:`~placement.SnapshotCache` whose key does not change (the federation
refreshes its inventories every ``inventory_interval_s``, 2 s, and a refresh means one
build); ``--snapshot fresh`` builds one per batch (the applier before the cache).

For each batch size it places ``--tasks`` requests in batches of that size and prints
CPU µs per decision (``time.process_time``), the snapshot's construction and the
``plan`` call apart, the best of ``--repeat`` rounds (by the ``plan`` figure; each round
places all ``--tasks`` afresh; one untimed call of one request warms the imports and
the predictor first).

Reproduce::

    PYTHONPATH=. python -m bench.placement.replay --nodes 1000 --tasks 10000 --batches 200 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from adapters.base import AdapterContext
from adapters.sim import SimAdapter
from bench.control_plane.live import workflow
from bench.control_plane.server import sim_federation
from continuum.federation import FederationDocument
from continuum.model import Node, Topology, WorkflowDocument
from monitoring.topology import TopologyModel
from placement import PlacementRequest, Snapshot, SnapshotCache, default_framework, plan
from placement.batch import ClassCachedPredictor
from placement.framework import Framework
from placement.learned import LearnedPredictor
from placement.plugins.load import with_load


def site_nodes(nodes: int, state_dir: Path) -> tuple[list[Node], TopologyModel]:
    """The live bench's inventory (``nodes`` sim nodes on two sites) and its network."""
    doc = FederationDocument.model_validate(sim_federation(nodes, 2))
    ctx = AdapterContext(artifacts=None, state_dir=state_dir)  # type: ignore[arg-type]
    inv = [n for site in doc.spec.sites for n in SimAdapter(site, ctx).inventory()]
    return inv, TopologyModel(Topology(locations=doc.spec.locations, links=doc.spec.links))


def requests(count: int, start: int) -> list[PlacementRequest]:
    """``count`` requests for the live bench's tasks, keys from ``start``."""
    doc = WorkflowDocument.model_validate(workflow(0))
    tasks = doc.spec.tasks
    return [PlacementRequest(key=str(start + i), task=tasks[(start + i) % len(tasks)],
                             objective=doc.spec.objective, sources=[])
            for i in range(count)]


def framework() -> Framework:
    """The control plane's framework (control_plane/models.py), no trained model."""
    return with_load(default_framework(ClassCachedPredictor(LearnedPredictor(None))))


def measure(nodes: list[Node], net: TopologyModel, fw: Framework, batch: int, tasks: int,
            cache: SnapshotCache | None = None) -> tuple[float, float]:
    """CPU µs per decision (snapshot, plan) over ``tasks`` requests in batches of ``batch``;
    with ``cache``, each batch's snapshot from it (one key throughout), else built afresh."""
    snap_s = plan_s = 0.0
    done = 0
    while done < tasks:
        reqs = requests(min(batch, tasks - done), done)
        t0 = time.process_time()
        snap = (Snapshot(nodes=nodes, network=net, now=1.0) if cache is None
                else cache.get(0, lambda: nodes, net, 1.0))
        t1 = time.process_time()
        out = plan(reqs, snap, fw)
        t2 = time.process_time()
        assert all(o.decision is not None for o in out)
        snap_s += t1 - t0
        plan_s += t2 - t1
        done += len(reqs)
    return snap_s / tasks * 1e6, plan_s / tasks * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--batches", type=int, nargs="+", default=[200, 20])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--snapshot", choices=["cache", "fresh"], default="cache")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        nodes, net = site_nodes(args.nodes, Path(d))
    fw = framework()
    plan(requests(1, 0), Snapshot(nodes=nodes, network=net, now=1.0), fw)  # warm
    print(f"{args.nodes} nodes, {args.tasks} tasks, snapshot {args.snapshot}; "
          f"CPU µs per decision, best of {args.repeat}")
    print("| batch | snapshot µs/decision | plan µs/decision |")
    print("|---|---|---|")
    for b in args.batches:
        # a new cache per round: each round's first batch builds, as after a refresh
        runs = [measure(nodes, net, fw, b, args.tasks,
                        SnapshotCache() if args.snapshot == "cache" else None)
                for _ in range(args.repeat)]
        s, p = min(runs, key=lambda x: x[1])
        print(f"| {b} | {s:.0f} | {p:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
