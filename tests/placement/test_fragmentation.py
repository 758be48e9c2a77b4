"""GPU fragmentation (FGD, Weng et al., USENIX ATC'23) as a score plugin.

Aspects: the fragmentation measure on hand-computed states (FGD's and the fill-up
extension); per-GPU fit and take (a fractional pod on one GPU, best fit); the plugin's
choices through both the framework (`place`, the control plane's path) and the batch
assigner, table-driven: a CPU-only pod avoids a GPU host when a CPU host fits, a
fractional pod fills a partly used GPU before an empty one, a whole-GPU pod keeps a
host of entirely free GPUs for multi-GPU work; weight 0 switches it off; bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

from placement import PlacementRequest, Snapshot, default_framework, place
from placement.batch import BatchAssigner
from placement.framework import Framework
from placement.plugins.fragmentation import (
    GpuFragmentation,
    Workload,
    fragmentation,
    reach,
    stranding,
    type_weights,
)
from tests.placement.placement_factories import GI, network, node, request, task

U = 1000  # milli-GPUs per GPU


def _place_by(path: str, req: PlacementRequest, snap: Snapshot, fw: Framework) -> str:
    """The node ``req`` goes to through ``place`` (the control plane's path,
    ``path="framework"``) or the batch assigner (``"batch"``)."""
    if path == "framework":
        out = place([req], snap, fw)[0]
        assert out.decision is not None
        return out.decision.node
    return snap.ids[BatchAssigner(snap, fw).assign_one(req)]


def fw_with(workload: Workload | None, weight: float = 1.0, scarcity: bool = False
            ) -> Framework:
    fw = default_framework()
    for p in fw.scores:
        if isinstance(p, GpuFragmentation):
            p.workload = workload
            p.weight = weight
            p.scarcity = scarcity
    return fw


@pytest.mark.parametrize(("free_cpu", "slots", "wl", "fill", "expected"), [
    # one GPU type (4 cpu, 1 whole GPU): fits → no partial GPU → 0 fragments
    (8.0, [U, U], [(4.0, 0, U, 1.0)], False, 0.0),
    # same but too little cpu: every idle GPU is a fragment (FGD case 1)
    (2.0, [U, U], [(4.0, 0, U, 1.0)], False, 2.0),
    # fractional type 0.5: the 0.3 leftover is a fragment, the 0.6 one is not
    (8.0, [300, 600], [(1.0, 0, 500, 1.0)], False, 0.3),
    # CPU-only type: all idle GPUs count (it can use none)
    (8.0, [U, 200], [(1.0, 0, 0, 1.0)], False, 1.2),
    # mixture: p-weighted sum
    (2.0, [U, U], [(4.0, 0, U, 0.5), (1.0, 0, U, 0.5)], False, 1.0),
    # fill-up: 6 cpu hold one 4-cpu pod only, so 1 of 2 free GPUs is stranded
    (6.0, [U, U], [(4.0, 0, U, 1.0)], True, 1.0),
    # fill-up, fractional 0.5 on [1.0, 0.6]: 3 pods fit (2 + 1) → 0.1 left over
    (8.0, [U, 600], [(1.0, 0, 500, 1.0)], True, 0.1),
])
def test_fragmentation_measure(free_cpu: float, slots: list[int],
                               wl: list[tuple[float, int, int, float]], fill: bool,
                               expected: float) -> None:
    got = fragmentation(np.array([free_cpu]), np.array([64 * GI]), np.array([slots]), U,
                        Workload.of(wl), fill)
    assert got[0] == pytest.approx(expected)


def test_gpu_fit_and_take_are_per_gpu() -> None:
    snap = Snapshot(nodes=[node("a/g", 16, 64 * GI, 2 * U)], network=network(), gpu_unit=U)
    snap.take_gpus(0, 700)
    snap.take_gpus(0, 700)  # 0.3 left on each GPU: 0.6 free in total
    assert list(snap.gpu_slots[0]) == [300, 300]
    assert not snap.gpu_fit(600)[0]          # pooled 600 would have said yes
    assert snap.gpu_fit(300)[0]
    snap2 = Snapshot(nodes=[node("a/g", 16, 64 * GI, 2 * U)], network=network(), gpu_unit=U)
    snap2.take_gpus(0, 400)                  # GPU 0 partly used
    snap2.take_gpus(0, 500)                  # best fit: onto GPU 0 (600 free), not GPU 1
    assert list(snap2.gpu_slots[0]) == [100, U]
    assert not snap2.gpu_fit(2 * U)[0] and snap2.gpu_fit(U)[0]


GPU_TYPE = [(8.0, 8 * GI, U, 1.0)]
CASES = [
    # (name, nodes, pre-taken GPU units per node, request, workload, expected node)
    ("cpu-only pod avoids a GPU host when a cpu host fits",
     [node("a/gpu", 16, 64 * GI, 1 * U), node("a/cpu", 16, 64 * GI)], [0, 0],
     task(cpu=10, mem=GI), GPU_TYPE, "a/cpu"),
    ("cpu-only pod goes to the GPU host when it leaves room for the GPU work",
     [node("a/gpu", 32, 64 * GI, 1 * U), node("a/cpu", 12, 64 * GI)], [0, 0],
     task(cpu=10, mem=GI), GPU_TYPE, None),
    ("fractional pod fills a partly used GPU before an empty one",
     [node("a/empty", 16, 64 * GI, 1 * U), node("a/partial", 16, 64 * GI, 1 * U)], [0, 700],
     task(cpu=1, mem=GI, gpu=300), [(1.0, GI, 500, 1.0)], "a/partial"),
    ("whole-GPU pod keeps a host of entirely free GPUs for 2-GPU work",
     [node("a/twofree", 16, 64 * GI, 2 * U), node("a/onefree", 16, 64 * GI, 2 * U)], [0, 300],
     task(cpu=1, mem=GI, gpu=U), [(1.0, GI, 2 * U, 1.0)], "a/onefree"),
]


@pytest.mark.parametrize(("name", "nodes", "taken", "t", "wl", "expected"), CASES,
                         ids=[c[0] for c in CASES])
@pytest.mark.parametrize("path", ["framework", "batch"])
def test_fragmentation_choices(name: str, nodes: list, taken: list[int], t, wl,
                               expected: str | None, path: str) -> None:
    snap = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
    for i, units in enumerate(taken):
        snap.free_gpu[i] -= units
        snap.take_gpus(i, units)
    fw = fw_with(Workload.of(wl))
    chosen = _place_by(path, request(t, latency=0, data=0), snap, fw)
    if expected is None:
        # no fragmentation either way: the static terms decide (the bigger host's
        # smaller power share), exactly as without the plugin
        base = fw_with(Workload.of(wl), weight=0.0)
        ref = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
        j0 = BatchAssigner(ref, base).assign_one(request(t, latency=0, data=0))
        assert chosen == ref.ids[j0]
    else:
        assert chosen == expected


def test_weight_zero_switches_it_off() -> None:
    # the GPU host has a much lower power per core: energy alone sends the pod there
    nodes = [node("a/gpu", 64, 64 * GI, 1 * U, idle=50, max_w=200),
             node("a/cpu", 12, 64 * GI, idle=50, max_w=200)]
    t = task(cpu=10, mem=GI)
    wl = Workload.of([(60.0, GI, U, 1.0)])
    got = {}
    for w in (0.0, 50.0):
        snap = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
        out = place([request(t, latency=0, data=0)], snap, fw_with(wl, w))[0]
        assert out.decision is not None
        got[w] = out.decision.node
    assert got == {0.0: "a/gpu", 50.0: "a/cpu"}


@pytest.mark.parametrize(("taken", "knee", "expected"), [
    (0, 0.0, 0.0), (1 * U, 0.0, 0.25), (2 * U, 0.0, 0.5), (3 * U, 0.5, 0.5), (1 * U, 0.5, 0.0),
])
def test_pressure_scales_with_allocated_gpus(taken: int, knee: float, expected: float) -> None:
    snap = Snapshot(nodes=[node("a/g", 16, 64 * GI, 4 * U)], network=network(), gpu_unit=U)
    snap.free_gpu[0] -= taken
    assert GpuFragmentation(knee=knee).pressure(snap) == pytest.approx(expected)


def test_idle_cluster_strands_nothing() -> None:
    # with scarcity on and every GPU free, the term is neutral: energy decides
    nodes = [node("a/gpu", 64, 64 * GI, 1 * U), node("a/cpu", 12, 64 * GI)]
    snap = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
    fw = fw_with(Workload.of([(60.0, GI, U, 1.0)]), weight=50.0, scarcity=True)
    out = place([request(task(cpu=10, mem=GI), latency=0, data=0)], snap, fw)[0]
    assert out.decision is not None and out.decision.node == "a/gpu"


def test_workload_learned_online_from_requests() -> None:
    p = GpuFragmentation()
    assert p.distribution() is None
    p.observe(request(task(cpu=2, gpu=U), key="a"))
    p.observe(request(task(cpu=2, gpu=U), key="a"))  # same key: counted once
    p.observe(request(task(cpu=1), key="b"))
    wl = p.distribution()
    assert wl is not None
    assert sorted(zip(wl.gpu.tolist(), wl.prob.tolist(), strict=True)) == [(0, 0.5), (U, 0.5)]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Workload.of([])
    with pytest.raises(ValueError, match="more than 0"):
        Workload.of([(1.0, GI, U, 0.0)])
    with pytest.raises(ValueError, match="weight must be >= 0"):
        GpuFragmentation(weight=-1)
    with pytest.raises(ValueError, match="strand must be >= 0"):
        GpuFragmentation(strand=-0.5)
    with pytest.raises(ValueError, match="gpu_unit must be >= 1"):
        Snapshot(nodes=[node()], network=network(), gpu_unit=0)


def _random_instance(seed: int, unit: int, labelled: bool = False) -> tuple[Snapshot, list]:
    """Nodes of a few classes with random (partly repeated) free states, some GPUs in
    use (pressure > 0), and requests of a few shapes, some repeated; ``labelled``: the
    nodes carry a GPU ``model`` label (a or b) and some shapes require model a."""
    rng = np.random.default_rng(seed)
    lab = np.random.default_rng(seed + 500)
    kinds = [(8, 32 * GI, 0), (16, 64 * GI, 1 * unit), (32, 128 * GI, 4 * unit),
             (64, 256 * GI, 8 * unit)]
    nodes = []
    for i in range(int(rng.integers(10, 40))):
        cpu, mem, gpu = kinds[int(rng.integers(len(kinds)))]
        used = float(rng.choice([0.0, 0.25, rng.uniform(0, 0.9)]))
        free_gpu = int(rng.integers(0, gpu + 1)) if gpu and rng.uniform() < 0.5 else gpu
        nodes.append(node(f"s{i % 3}/n{i}", cpu, mem, gpu,
                          free=(round(cpu * (1 - used), 1), int(mem * (1 - used)), free_gpu),
                          labels={"model": str(lab.choice(["a", "b"]))} if labelled else None))
    snap = Snapshot(nodes=nodes, network=network(), gpu_unit=unit)
    gpus = [0, 0, 0, unit // 2 if unit > 1 else 1, unit // 4 if unit > 1 else 1, unit,
            2 * unit]
    shapes = [(float(rng.choice([0.5, 1, 2, 4, 8])), int(rng.choice([1, 2, 8])) * GI,
               int(rng.choice(gpus))) for _ in range(8)]
    wants = [{"model": "a"} if labelled and lab.uniform() < 0.5 else {} for _ in shapes]
    reqs = []
    for k in range(int(rng.integers(30, 80))):
        j = int(rng.integers(len(shapes)))
        c, m, g = shapes[j]
        reqs.append(request(task(f"t{k % 11}", c, m, g, labels=wants[j]), key=f"r{k}"))
    return snap, reqs


@pytest.mark.parametrize("unit", [1, U])
@pytest.mark.parametrize("fill", [True, False])
@pytest.mark.parametrize("candidates", [1024, 5])
def test_memoised_term_places_identically(unit: int, fill: bool, candidates: int) -> None:
    """The per-node memo (FragmentationCache) is exact: on seeded random instances, with
    runs released in between, the assigner places every request on the same node with it
    as without it, and the memo's ΔF equals the plugin's bit for bit."""
    from placement.plugins.fragmentation import FragmentationCache

    for seed in range(25):
        snap, reqs = _random_instance(seed, unit)
        sides = []
        for cached in (True, False):
            fw = default_framework()
            for p in fw.scores:
                if isinstance(p, GpuFragmentation):
                    p.fill = fill
            sides.append(BatchAssigner(snap.copy(), fw, cache_dynamic=cached,
                                       dynamic_candidates=candidates))
        rng = np.random.default_rng(1000 + seed)
        placed: list[tuple[int, object]] = []
        for r in reqs:
            got = [a.assign_one(r) for a in sides]
            assert got[0] == got[1], f"seed {seed}, request {r.key}: {got}"
            if got[0] >= 0:
                placed.append((got[0], r.task.resources))
            if placed and rng.uniform() < 0.2:  # a run ends
                i, res = placed.pop(int(rng.integers(len(placed))))
                for a in sides:
                    a.release(i, res.cpu, res.memory, res.gpu)
            a0, a1 = sides
            assert np.array_equal(a0.snap.gpu_slots, a1.snap.gpu_slots)
        plugin = next(p for p in sides[0].framework.scores if isinstance(p, GpuFragmentation))
        s = sides[0].snap
        idx = np.flatnonzero(s.gpu_slots.any(axis=1))
        if idx.size and plugin.distribution() is not None:
            memo = FragmentationCache(plugin, s)
            for r in reqs[:10]:
                assert np.array_equal(memo.delta(r, idx), plugin.delta(r, s, idx))
                assert np.array_equal(memo.delta(r, idx), plugin.delta(r, s, idx))


@pytest.mark.parametrize("order", ["size", "regret", "best"])
def test_memoised_term_same_batches(order: str) -> None:
    """Whole batches (``assign``; ``best`` restores capacity between its two orders, which
    the memo must notice) come out the same with and without the memo."""
    for seed in range(15):
        snap, reqs = _random_instance(seed, U)
        got = [BatchAssigner(snap.copy(), default_framework(), cache_dynamic=cached)
               .assign(reqs, order) for cached in (True, False)]
        assert np.array_equal(got[0], got[1]), f"seed {seed}"


def _replay_side_by_side(sides: list[BatchAssigner], reqs: list[PlacementRequest],
                         seed: int, keep: int) -> list[int]:
    """Place ``reqs`` on both assigners (a seeded fifth of the placed runs released in
    between), asserting each request goes to the same node with the same ``keep`` best
    totals (to 1e-12: the last bits of ``F = frag @ p`` over a different set of rows);
    returns how many ΔF each side computed."""
    evaluated = [0, 0]
    rng = np.random.default_rng(seed)
    placed: list[tuple[int, object]] = []
    for r in reqs:
        got = [a.assign_one(r) for a in sides]
        assert got[0] == got[1], f"seed {seed}, request {r.key}: {got}"
        dyn = [a.last_dynamic for a in sides]
        assert (dyn[0] is None) == (dyn[1] is None)
        if dyn[0] is not None and dyn[1] is not None:
            best = [np.sort(d.total)[:keep] for d in dyn]
            assert np.allclose(best[0], best[1], rtol=0, atol=1e-12), \
                f"seed {seed}, request {r.key}"
            for i, d in enumerate(dyn):
                evaluated[i] += int(np.isfinite(d.raw[GpuFragmentation.name]).sum())
        if got[0] >= 0:
            placed.append((got[0], r.task.resources))
        if placed and rng.uniform() < 0.2:  # a run ends
            i, res = placed.pop(int(rng.integers(len(placed))))
            for a in sides:
                a.release(i, res.cpu, res.memory, res.gpu)
    return evaluated


@pytest.mark.parametrize("unit", [1, U])
@pytest.mark.parametrize("fill", [True, False])
@pytest.mark.parametrize("keep", [1, 4])
@pytest.mark.parametrize("strand", [0.0, 1.0])
@pytest.mark.parametrize("pods", [True, False])
def test_class_bound_places_as_the_exhaustive_evaluation(unit: int, fill: bool, keep: int,
                                                         strand: float, pods: bool) -> None:
    """The per-class bound on the fragmentation term (BatchAssigner.prune_dynamic) prunes
    only what cannot rank: on seeded random instances (tied free states included), with
    runs released in between, every request goes to the node the exhaustive evaluation
    of every fitting candidate picks, the ``keep`` best totals are the same (to 1e-12, the
    choice's tie band), and fewer
    candidates are evaluated overall."""
    evaluated = {True: 0, False: 0}
    for seed in range(25):
        snap, reqs = _random_instance(seed, unit)
        sides = []
        for prune in (True, False):
            fw = default_framework()
            for p in fw.scores:
                if isinstance(p, GpuFragmentation):
                    p.fill = fill
                    p.strand = strand
                    p.pods = pods
            a = BatchAssigner(snap.copy(), fw, prune_dynamic=prune, keep=keep,
                              dynamic_candidates=None)
            sides.append(a)
        for side, n in zip((True, False), _replay_side_by_side(sides, reqs, 2000 + seed, keep),
                           strict=True):
            evaluated[side] += n
    assert evaluated[True] < evaluated[False]


# one GPU type: 0.3 GPU and 3 cores; a GPU holds 3 such pods (0.1 left over), so the
# fill-up measure needs 9 cores per GPU, while the workload's ratio (3 cores per 0.3
# GPU) needs 10 cores to feed a whole GPU
STRAND_TYPE = [(3.0, GI, 300, 1.0)]


def test_stranding_counts_gpus_the_cpu_can_no_longer_feed() -> None:
    wl = Workload.of(STRAND_TYPE)
    slots = np.array([[U], [U], [0], [U]])
    got = stranding(np.array([10.0, 9.0, 0.0, 40.0]), np.full(4, 64 * GI), slots, U, wl)
    assert got.tolist() == pytest.approx([0.0, 0.1, 0.0, 0.0])
    # without a GPU type nothing is stranded; the measure adds it with its weight
    assert not stranding(np.array([1.0]), np.array([GI]), slots[:1], U,
                         Workload.of([(3.0, GI, 0, 1.0)])).any()
    base = fragmentation(np.array([9.0]), np.array([64 * GI]), slots[:1], U, wl)
    with_s = fragmentation(np.array([9.0]), np.array([64 * GI]), slots[:1], U, wl,
                           strand=2.0)
    assert with_s[0] == pytest.approx(base[0] + 0.2)


@pytest.mark.parametrize("path", ["framework", "batch"])
def test_cpu_only_pod_avoids_stranding_a_gpu_the_fill_up_measure_misses(path: str) -> None:
    """Two equal GPU hosts, 10 and 14 cores free; a 1-core CPU-only pod. The fill-up
    measure sees no change on either (3 pods of the type still fit each GPU), so the
    tie-break (least free cpu) strands a GPU of the first; with the stranding count the
    pod goes to the host that can spare the core."""
    nodes = [node("a/tight", 16, 64 * GI, U, free=(10.0, 64 * GI, U)),
             node("a/roomy", 16, 64 * GI, U, free=(14.0, 64 * GI, U))]
    got = {}
    for strand in (0.0, 1.0):
        snap = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
        fw = fw_with(Workload.of(STRAND_TYPE))
        for p in fw.scores:
            if isinstance(p, GpuFragmentation):
                p.strand = strand
        req = request(task(cpu=1, mem=GI), latency=0, data=0)
        got[strand] = _place_by(path, req, snap, fw)
    assert got == {0.0: "a/tight", 1.0: "a/roomy"}


@pytest.mark.parametrize("pods", [False, True])
@pytest.mark.parametrize("unit", [1, U])
@pytest.mark.parametrize("strand", [0.0, 1.0])
def test_growth_bound_is_a_lower_bound_of_delta(unit: int, strand: float, pods: bool) -> None:
    """``growth_bound``: where it says ``same`` the plugin's ΔF is exactly 0, elsewhere
    ΔF is at least its ``lower`` (which the per-class bound uses to leave nodes
    uncomputed), and the bound is positive on some nodes (it is used at all)."""
    positive = 0
    for seed in range(25):
        snap, reqs = _random_instance(seed, unit)
        fw = default_framework()
        plugin = next(p for p in fw.scores if isinstance(p, GpuFragmentation))
        plugin.strand, plugin.pods = strand, pods
        a = BatchAssigner(snap, fw)
        for r in reqs[:20]:  # some GPUs in use, so the pressure is above 0
            a.assign_one(r)
        idx = np.flatnonzero(snap.gpu_slots.any(axis=1))
        pressure = plugin.pressure(snap)
        if not idx.size or pressure <= 0:
            continue
        for r in reqs:
            if r.task.resources.gpu > 0:
                continue
            ok = idx[snap.fits(r.task.resources)[idx]]
            same, lower = plugin.growth_bound(r, snap, ok, pressure)
            assert np.array_equal(same, plugin.unchanged(r, snap, ok))
            d = plugin.delta(r, snap, ok)
            assert (d[same] == 0.0).all(), f"seed {seed}, request {r.key}"
            assert (d >= lower).all(), f"seed {seed}, request {r.key}: {d - lower}"
            assert (lower[same] == 0.0).all()
            positive += int((lower > 0).sum())
    assert positive > 0


def test_group_index_follows_takes_and_releases() -> None:
    """The per-group index the bound walks (sorted by free cpu, then position) stays
    what a fresh sort gives after placements and releases, and the walk places as the
    fit test over every member does (index_groups off)."""
    from placement.batch import _GroupIndex

    indexed = 0
    for seed in range(15):
        snap, reqs = _random_instance(seed, U)
        sides = [BatchAssigner(snap.copy(), default_framework(), index_groups=on)
                 for on in (True, False)]
        rng = np.random.default_rng(3000 + seed)
        placed: list[tuple[int, object]] = []
        for r in reqs:
            got = [a.assign_one(r) for a in sides]
            assert got[0] == got[1], f"seed {seed}, request {r.key}: {got}"
            if got[0] >= 0:
                placed.append((got[0], r.task.resources))
            if placed and rng.uniform() < 0.3:  # a run ends
                i, res = placed.pop(int(rng.integers(len(placed))))
                for a in sides:
                    a.release(i, res.cpu, res.memory, res.gpu)
        a = sides[0]
        assert a.classes is not None
        for gi in a._gindex.values():
            indexed += 1
            gi.sync(a.snap, a.classes, a.changed)
            fresh = _GroupIndex(a.snap, a.classes, np.array(list(gi.offset), dtype=np.int64),
                                gi.m, len(a.changed))
            assert np.array_equal(gi.pos, fresh.pos) and np.array_equal(gi.val, fresh.val)
    assert indexed > 0


@pytest.mark.parametrize("keep", [1, 4])
@pytest.mark.parametrize("strand", [0.0, 1.0])
def test_growth_bound_beside_measured_load_places_as_without(keep: int, strand: float) -> None:
    """With measured load beside it (the control plane's framework: two dynamic terms,
    bounded per class together for a CPU-only request — BatchAssigner._joint_walk — and
    evaluated on capped candidates for a GPU one), the growth bound leaves ΔF uncomputed
    only where a node cannot rank: every request goes to the node the evaluation without
    it picks, with the same ``keep`` best totals, and fewer ΔF are computed."""
    from placement.plugins.load import with_load

    evaluated = {True: 0, False: 0}
    for seed in range(25):
        snap, reqs = _random_instance(seed, U)
        sides = []
        for bound in (True, False):
            fw = with_load(default_framework())
            for p in fw.scores:
                if isinstance(p, GpuFragmentation):
                    p.strand = strand
            sides.append(BatchAssigner(snap.copy(), fw, keep=keep, bound_growth=bound))
        for side, n in zip((True, False), _replay_side_by_side(sides, reqs, 4000 + seed, keep),
                           strict=True):
            evaluated[side] += n
    assert evaluated[True] < evaluated[False]


# two task types: small fractional pods (0.2 GPU, 2 cores) and 2-GPU pods (8 cores),
# equally popular
POD_TYPES = [(2.0, GI, 200, 1.0), (8.0, GI, 2 * U, 1.0)]


def test_fragments_counted_in_pods_they_block() -> None:
    """A 0.4-GPU, 8-core request. On an idle 2-GPU host with 100 cores it blocks the one
    2-GPU pod and 2 small ones (10 → 8, the GPU it takes); on a 1-GPU host with 10 cores
    it blocks 4 small pods (5 → 1: the cores run out). In GPUs (FGD's unit) the 2-GPU pod
    weighs most (ΔF 0.8 vs 0); in pods the four small ones do (0.4 vs 0.9)."""
    wl = Workload.of(POD_TYPES)
    cpu = np.array([100.0, 10.0])
    mem = np.full(2, 64 * GI)
    slots = np.array([[U, U], [U, 0]])
    after = np.array([[600, U], [600, 0]])
    for pods, expected in ((False, [0.8, 0.0]), (True, [0.4, 0.9])):
        d = fragmentation(cpu - 8, mem - GI, after, U, wl, pods=pods) \
            - fragmentation(cpu, mem, slots, U, wl, pods=pods)
        assert d.tolist() == pytest.approx(expected)
    assert type_weights(wl, U, pods=True).tolist() == pytest.approx([2.5, 0.25])
    assert type_weights(wl, U).tolist() == pytest.approx([0.5, 0.5])
    # stranding in pods: over the mean GPU pod (1.1 GPU)
    s = stranding(np.array([2.0]), np.array([63 * GI]), after[1:], U, wl)
    assert s.tolist() == pytest.approx([0.16])
    assert stranding(np.array([2.0]), np.array([63 * GI]), after[1:], U, wl,
                     pods=True).tolist() == pytest.approx([0.16 / 1.1])


@pytest.mark.parametrize("path", ["framework", "batch"])
def test_pod_measure_spares_small_pods_over_a_rare_big_one(path: str) -> None:
    """The state of the test above: counted in GPUs (stranding included) the request goes
    to the 1-GPU host and blocks four small pods to keep the 2-GPU host whole; counted in
    pods it goes to the 2-GPU host and blocks one 2-GPU pod (and no small one more)."""
    nodes = [node("a/two-gpu", 128, 64 * GI, 2 * U, free=(100.0, 64 * GI, 2 * U)),
             node("a/one-gpu", 128, 64 * GI, U, free=(10.0, 64 * GI, U))]
    got = {}
    for pods in (False, True):
        snap = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
        fw = fw_with(Workload.of(POD_TYPES))
        for p in fw.scores:
            if isinstance(p, GpuFragmentation):
                p.pods = pods
        req = request(task(cpu=8, mem=GI, gpu=400), latency=0, data=0)
        got[pods] = _place_by(path, req, snap, fw)
    assert got == {False: "a/one-gpu", True: "a/two-gpu"}


def test_constrained_type_counts_only_where_admitted() -> None:
    """A type that requires label model=t4: on a node without it none of its pods fit, so
    every free GPU is its fragment (FGD's "does not fit" case); on a node with it, as if
    unconstrained. Its static key and mask follow NodeConstraints' rules."""
    from placement.plugins.constraints import static_key, static_mask
    from placement.plugins.fragmentation import admit_matrix, fill_count

    key = static_key(task(labels={"model": "t4"}, arch=["x86_64"]).constraints)
    assert key == ((("model", "t4"),), ("x86_64",), (), ())
    assert static_key(task().constraints) is None
    nodes = [node("a/t4", 16, 64 * GI, 2 * U, labels={"model": "t4"}),
             node("a/g2", 16, 64 * GI, 2 * U, labels={"model": "g2"}),
             node("a/arm", 16, 64 * GI, 2 * U, labels={"model": "t4"}, arch="aarch64")]
    snap = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
    assert static_mask(key, snap).tolist() == [True, False, False]
    wl = Workload.of([(2.0, GI, 500, 1.0, None), (2.0, GI, 500, 1.0, key)])
    admit = admit_matrix(wl, snap)
    assert admit is not None and admit.tolist() == [[True, True], [True, False],
                                                     [True, False]]
    cpu, mem = np.full(3, 16.0), np.full(3, 64 * GI)
    slots = np.array([[U, 600]] * 3)
    count = fill_count(cpu, mem, slots, U, wl, admit)
    assert count.tolist() == [[3, 3], [3, 0], [3, 0]]
    frag = fragmentation(cpu, mem, slots, U, Workload.of([(2.0, GI, 500, 1.0, key)]),
                         admit=admit[:, 1:])
    assert frag.tolist() == pytest.approx([0.1, 1.6, 1.6])
    assert fragmentation(cpu, mem, slots, U, wl, fill=False, admit=admit).tolist() \
        == pytest.approx([0.0, 0.8, 0.8])  # one pod fits both GPUs on t4
    assert Workload.of([(2.0, GI, 500, 1.0)]).admit == ()  # unconstrained: no masks


@pytest.mark.parametrize("path", ["framework", "batch"])
def test_unconstrained_pod_keeps_the_gpus_a_constrained_type_needs(path: str) -> None:
    """Half the pods seen so far require the t4 model (one of two GPU hosts), half run
    anywhere. An unconstrained 0.5-GPU pod, whose energy favours the t4 host (70 W vs
    250 W GPUs), goes to the other host: with task types keyed by their constraints the
    t4 host's GPUs are the only ones the constrained half can use (each of its pods
    weighs 1 / reach = 2 there). Keyed by (cpu, memory, gpu) alone the two halves are
    one type that fits both hosts alike and energy decides."""
    nodes = [node("a/t4", 16, 64 * GI, 2 * U, labels={"model": "t4"}, gpu_w=0.07),
             node("a/g2", 16, 64 * GI, 2 * U, labels={"model": "g2"}, gpu_w=0.25)]
    got = {}
    for constrained in (True, False):
        snap = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
        fw = fw_with(None, weight=10.0)
        plugin = next(p for p in fw.scores if isinstance(p, GpuFragmentation))
        plugin.constrained = constrained
        for k in range(6):
            plugin.observe(request(task(cpu=2, mem=GI, gpu=500,
                                        labels={"model": "t4"} if k % 2 else {}),
                                   key=f"seen-{k}"))
        wl = plugin.distribution()
        assert wl is not None and len(wl.admit) == (2 if constrained else 0)
        if constrained:
            rho = reach(wl, snap)
            assert rho is not None and sorted(rho.tolist()) == [0.5, 1.0]
        req = request(task(cpu=2, mem=GI, gpu=500), key="new", latency=0, data=0)
        got[constrained] = _place_by(path, req, snap, fw)
    assert got == {True: "a/g2", False: "a/t4"}


def test_constrained_types_keep_the_memo_and_the_bound_exact() -> None:
    """With nodes labelled by GPU model and some request shapes requiring one: the memo's
    ΔF equals the plugin's bit for bit, ``growth_bound`` stays a lower bound (exactly 0
    where it says ``same``), and the per-class bound — alone and beside measured load —
    places as the exhaustive evaluation (a constrained request's band may hold no node at
    ΔF = 0: then nothing may be pruned)."""
    from placement.plugins.fragmentation import FragmentationCache
    from placement.plugins.load import with_load

    constrained_types = 0
    for seed in range(12):
        snap, reqs = _random_instance(seed, U, labelled=True)
        for joint in (True, False):
            pair = [BatchAssigner(snap.copy(), with_load(default_framework()) if joint
                                  else default_framework(), prune_dynamic=prune,
                                  dynamic_candidates=None) for prune in (True, False)]
            _replay_side_by_side(pair, reqs, 3000 + seed, 1)
        sides = pair
        s = sides[0].snap
        plugin = next(p for p in sides[0].framework.scores if isinstance(p, GpuFragmentation))
        wl = plugin.distribution()
        idx = np.flatnonzero(s.gpu_slots.any(axis=1))
        if wl is None or not idx.size:
            continue
        constrained_types += sum(k is not None for k in wl.admit)
        memo = FragmentationCache(plugin, s)
        pressure = plugin.pressure(s)
        for r in reqs[:12]:
            assert np.array_equal(memo.delta(r, idx), plugin.delta(r, s, idx))
            if r.task.resources.gpu > 0 or pressure <= 0:
                continue
            ok = idx[s.fits(r.task.resources)[idx]]
            same, lower = plugin.growth_bound(r, s, ok, pressure)
            d = plugin.delta(r, s, ok)
            assert (d[same] == 0.0).all() and (d >= lower).all(), f"seed {seed}, {r.key}"
    assert constrained_types > 0
