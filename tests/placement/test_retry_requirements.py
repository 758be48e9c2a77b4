"""Retries, software requirements, draining sites and silent plugins in placement.

Aspects: a retry prefers a node other than the ones where earlier attempts failed (a
soft preference: with no other feasible node the same one is used); ``requires.python``
keeps a task off nodes that declare their modules without it (undeclared nodes and
image tasks pass), in the framework and in the batch assigner; a draining site's nodes
are rejected with a reason naming the site; the GPU-fragmentation term is not named in
the reasons of a decision it did not influence.
"""

from __future__ import annotations

from continuum.model import Requirements, Task
from placement import Snapshot, place
from placement.batch import BatchAssigner
from placement.plugins.fragmentation import GpuFragmentation, Workload
from tests.placement.placement_factories import GI, network, node, request, snapshot, task

U = 1000


def with_modules(t: Task, *modules: str) -> Task:
    return t.model_copy(update={"requires": Requirements(python=list(modules))})


def test_a_retry_goes_to_another_node_when_one_fits() -> None:
    nodes = [node("s/a"), node("s/b")]
    first = place([request(task())], snapshot(nodes))[0]
    assert first.decision is not None and first.decision.node == "s/a"
    req = request(task())
    req.avoid = frozenset({"s/a"})
    retry = place([req], snapshot(nodes))[0]
    assert retry.decision is not None and retry.decision.node == "s/b"
    assert "retry avoids s/a, where an earlier attempt failed" in retry.decision.reasons


def test_a_retry_uses_the_same_node_when_no_other_fits() -> None:
    nodes = [node("s/a", cpu=8), node("s/b", cpu=2)]
    req = request(task(cpu=4))
    req.avoid = frozenset({"s/a"})
    out = place([req], snapshot(nodes))[0]
    assert out.decision is not None and out.decision.node == "s/a"
    assert any("no other feasible node" in r for r in out.decision.reasons)


def test_python_requirements_filter_declaring_nodes_only() -> None:
    lacking = node("dev/pi").model_copy(update={"python_modules": ["numpy", "json"]})
    having = node("dev/jetson").model_copy(update={"python_modules": ["numpy", "sklearn"]})
    undeclared = node("sim/vm")
    t = with_modules(task(), "sklearn.svm", "numpy")
    out = place([request(t)], snapshot([lacking, having, undeclared]))[0]
    assert out.decision is not None
    assert out.decision.filtered == {"lack required python modules": 1}
    alone = place([request(t)], snapshot([lacking]))[0]
    assert alone.decision is None
    assert "1 lack required python modules (lacks python module sklearn.svm)" in alone.reason
    assert "pip install" in alone.reason
    # an image brings its own software
    img = with_modules(task(image="python:3.12"), "sklearn")
    boxed = node("k8s/n", runtimes=["container"]).model_copy(update={"python_modules": []})
    assert place([request(img)], snapshot([boxed]))[0].decision is not None


def test_batch_assigner_honours_python_requirements() -> None:
    lacking = node("dev/pi").model_copy(update={"python_modules": ["numpy"]})
    having = node("dev/jetson", speed=0.5).model_copy(
        update={"python_modules": ["numpy", "sklearn"]})
    snap = snapshot([lacking, having])
    got = BatchAssigner(snap).assign([request(with_modules(task(), "sklearn"), key="r1"),
                                      request(task(), key="r2")])
    assert got.tolist() == [1, 0]


def test_a_draining_site_is_named_in_the_reason() -> None:
    drained = node("hpc-dev/batch").model_copy(update={"draining": True})
    others = [node(f"cloud/vm{i}") for i in range(3)]
    out = place([request(task(sites=["hpc-dev"]))], snapshot([*others, drained]))[0]
    assert out.decision is None
    assert "1 on a draining site (site hpc-dev is draining)" in out.reason
    assert "3 site not allowed (allowed: hpc-dev)" in out.reason
    assert "resume" in out.reason
    anywhere = place([request(task())], snapshot([*others, drained]))[0]
    assert anywhere.decision is not None and anywhere.decision.node != "hpc-dev/batch"


def fw_frag(weight: float, scarcity: bool):  # type: ignore[no-untyped-def]
    from placement import default_framework

    fw = default_framework()
    for p in fw.scores:
        if isinstance(p, GpuFragmentation):
            p.workload, p.weight, p.scarcity = Workload.of([(60.0, GI, U, 1.0)]), weight, scarcity
    return fw


def test_fragmentation_is_not_named_when_it_did_not_count() -> None:
    nodes = [node("a/gpu", 64, 64 * GI, 1 * U), node("a/cpu", 12, 64 * GI)]
    # every GPU free and scarcity on: the term is 0 everywhere for this CPU-only task
    snap = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
    out = place([request(task(cpu=10, mem=GI), latency=0, data=0)], snap,
                fw_frag(50.0, scarcity=True))[0]
    assert out.decision is not None
    assert not any("fragmentation" in r for r in out.decision.reasons), out.decision.reasons
    # without scarcity it keeps the CPU-only task off the GPU host, and says so
    snap = Snapshot(nodes=nodes, network=network(), gpu_unit=U)
    out = place([request(task(cpu=10, mem=GI), latency=0, data=0)], snap,
                fw_frag(50.0, scarcity=False))[0]
    assert out.decision is not None and out.decision.node == "a/cpu"
    assert any(r.startswith("least growth of GPU fragmentation") for r in out.decision.reasons)
