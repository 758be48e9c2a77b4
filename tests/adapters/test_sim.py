"""The digital twin (adapters/sim.py): inventory, timeline, outputs, failures, re-adoption.

Time comes from a fake clock given as ``ctx.clock``; nothing sleeps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from adapters import base, registry
from adapters.base import (
    AdapterContext,
    ArtifactIn,
    ArtifactOut,
    ArtifactRecord,
    Handle,
    TaskRun,
)
from adapters.sim import (
    DEFAULT_WORK_CORE_S,
    SimAdapter,
    SimConfigError,
    factory,
    read_record,
    record_path,
    record_state,
)
from continuum.model import Node, RunState, SiteHealth, SiteKind, SiteSpec, Task, Tier

T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, wall_s: float) -> None:
        self.t += wall_s


class MemoryArtifacts:
    """An in-memory :class:`adapters.base.ArtifactStore`."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.records: dict[tuple[str, str], ArtifactRecord] = {}
        self.puts = 0

    def put_bytes(self, workflow_id: str, name: str, data: bytes, *,
                  simulated: bool = False) -> ArtifactRecord:
        self.puts += 1
        rec = ArtifactRecord(name=name, sha256=hashlib.sha256(data).hexdigest(),
                             size=len(data), simulated=simulated)
        self.blobs[(workflow_id, name)] = data
        self.records[(workflow_id, name)] = rec
        return rec

    def record(self, workflow_id: str, name: str) -> ArtifactRecord | None:
        return self.records.get((workflow_id, name))


POWER = {"idleWatts": 100, "maxWatts": 300, "gpuWatts": 70, "source": "test figures"}


def site(**config) -> SiteSpec:
    cfg = {
        "timeScale": 60,
        "nodes": [
            {"name": "c5", "count": 2, "cpu": 16, "memory": "64Gi", "power": POWER},
            {"name": "gpu", "cpu": "8000m", "memory": "32Gi", "gpu": 2, "speed": 2.0,
             "power": POWER, "labels": {"accelerator": "nvidia-t4"}},
            {"name": "part", "cpu": 128, "memory": "512Gi", "queueWait": "2m",
             "power": POWER},
        ],
    }
    cfg.update(config)
    return SiteSpec(name="cloud-test", kind=SiteKind.sim, tier=Tier.cloud,
                    location="frankfurt", config=cfg)


@pytest.fixture
def env(tmp_path: Path):
    clock = FakeClock()
    store = MemoryArtifacts()
    ctx = AdapterContext(artifacts=store, state_dir=tmp_path, clock=clock)
    return clock, store, ctx


def task(name="t", **kw) -> Task:
    kw.setdefault("command", ["true"])
    return Task(name=name, **kw)


def trun(t: Task, run_id="run-1", **kw) -> TaskRun:
    return TaskRun(run_id=run_id, workflow_id="wf-1", workflow_name="demo", task=t, **kw)


def node(adapter: SimAdapter, name: str):
    return next(n for n in adapter.inventory() if n.name == name)


# ---------------------------------------------------------------- registration, config


def test_registered_for_sim_kind(env):
    _, _, ctx = env
    assert registry._REGISTRY[SiteKind.sim] is factory
    a = factory(site(), ctx)
    assert isinstance(a, SimAdapter)
    assert isinstance(a, base.Adapter)
    assert a.health() == (SiteHealth.Ready, "")
    a.close()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"timeScale": 0}, "config.timeScale"),
        ({"failureRate": 1.5}, "config.failureRate"),
        ({"nodes": []}, "config.nodes"),
        ({"nodes": [{"name": "a", "cpu": "lots", "memory": "1Gi", "power": POWER}]},
         "config.nodes.0.cpu"),
        ({"nodes": [{"name": "a", "cpu": 1, "memory": "1Gx", "power": POWER}]},
         "config.nodes.0.memory"),
        ({"nodes": [{"name": "a", "cpu": 1, "memory": "1Gi", "power": POWER,
                     "queueWait": "soon"}]}, "config.nodes.0.queueWait"),
        ({"nodes": [{"name": "a", "cpu": 1, "memory": "1Gi",
                     "power": {"idleWatts": 50, "maxWatts": 10}}]}, "config.nodes.0.power"),
        ({"nodes": [{"name": "a", "cpu": 1, "memory": "1Gi", "power": POWER, "cores": 2}]},
         "config.nodes.0.cores"),
        ({"nodes": [{"name": "Bad_Name", "cpu": 1, "memory": "1Gi", "power": POWER}]},
         "config.nodes.0.name"),
        ({"bandwidth": 1}, "config.bandwidth"),
    ],
)
def test_config_errors_name_the_field(env, config, field):
    _, _, ctx = env
    with pytest.raises(SimConfigError) as e:
        SimAdapter(site(**config), ctx)
    assert field in str(e.value)
    assert "cloud-test" in str(e.value)
    assert isinstance(e.value, ValueError)


# ---------------------------------------------------------------- inventory


def test_inventory_nodes_are_simulated_and_expanded(env):
    _, _, ctx = env
    nodes = {n.name: n for n in SimAdapter(site(), ctx).inventory()}
    assert sorted(nodes) == ["c5-0", "c5-1", "gpu", "part"]
    for n in nodes.values():
        assert n.simulated and n.site_kind is SiteKind.sim
        assert n.tier is Tier.cloud and n.location == "frankfurt"
        assert n.id == f"cloud-test/{n.name}"
        assert n.free == n.allocatable
        assert n.utilisation == 0 and n.power_watts == 100
        assert n.observed_at is not None and n.observed_at.timestamp() == T0
        assert n.runtimes == ["process", "container"]
    assert nodes["gpu"].capacity.cpu == 8 and nodes["gpu"].capacity.gpu == 2
    assert nodes["gpu"].speed == 2.0 and nodes["gpu"].labels["accelerator"] == "nvidia-t4"
    assert nodes["c5-0"].capacity.memory == 64 * 2**30
    assert nodes["part"].queue_wait_s == 120


def test_inventory_deducts_active_runs_and_models_power(env):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    t = task(resources={"cpu": 4, "memory": "8Gi", "gpu": 1}, work=3600)
    a.submit(trun(t, "r1"), node(a, "gpu"), "r1")
    a.submit(trun(task(resources={"cpu": 4}), "r2"), node(a, "part"), "r2")  # queued 2 min
    clock.advance(0.5)  # 30 virtual seconds
    nodes = {n.name: n for n in a.inventory()}
    g = nodes["gpu"]
    assert (g.free.cpu, g.free.memory, g.free.gpu) == (4, 24 * 2**30, 1)
    assert g.utilisation == pytest.approx(0.5)
    assert g.power_watts == pytest.approx(100 + 200 * 0.5 + 70)
    p = nodes["part"]  # reserved while queued, but not busy
    assert p.free.cpu == 124 and p.utilisation == 0 and p.power_watts == 100
    assert nodes["c5-0"].free == nodes["c5-0"].allocatable


def test_each_inventory_is_a_snapshot_of_its_own(env):
    """Nodes are copies of one validated template per node: an earlier inventory's node
    keeps what it measured when later ones change, and every one validates as a Node."""
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    before = {n.name: n for n in a.inventory()}
    a.submit(trun(task(resources={"cpu": 4}, work=3600), "r1"), node(a, "c5-0"), "r1")
    clock.advance(0.5)
    after = {n.name: n for n in a.inventory()}
    assert before["c5-0"].free.cpu == 16 and before["c5-0"].utilisation == 0
    assert before["c5-0"].observed_at.timestamp() == T0
    assert after["c5-0"].free.cpu == 12 and after["c5-0"].utilisation == pytest.approx(0.25)
    assert after["c5-0"].observed_at.timestamp() == T0 + 0.5
    assert after["c5-0"] is not before["c5-0"] and after["c5-0"].free is not before["c5-0"].free
    for n in after.values():
        assert Node.model_validate(n.model_dump()) == n


# ---------------------------------------------------------------- submit and timeline


def test_submit_is_idempotent_by_request_id(env):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    t = task(resources={"cpu": 2}, work=7200)
    h1 = a.submit(trun(t), node(a, "c5-0"), "run-1")
    clock.advance(5)
    h2 = a.submit(trun(t), node(a, "c5-0"), "run-1")
    assert h2 is h1 and h2.data["submittedAt"] == T0
    assert node(a, "c5-0").free.cpu == 14  # counted once
    assert h1.site == "cloud-test" and h1.node == "c5-0" and h1.run_id == "run-1"


def test_timeline_dispatched_running_succeeded(env):
    clock, store, ctx = env
    a = SimAdapter(site(), ctx)
    t = task(resources={"cpu": 8}, work=8 * 600,  # 10 virtual minutes on 8 cores
             outputs=[{"name": "report", "path": "out/report.json", "size": "10Mi"},
                      {"name": "log", "path": "log.txt"}])
    inp = ArtifactIn(name="features", path="features.npz", url="http://x", sha256="0",
                     size=125_000_000)  # 1 Gbit → 1 virtual second at 1 Gbit/s
    run = trun(t, inputs=[inp], outputs=[
        ArtifactOut(name="report", path="out/report.json", url="http://x", size_hint=10 * 2**20),
        ArtifactOut(name="log", path="log.txt", url="http://x")])
    h = a.submit(run, node(a, "part"), "run-1")  # queue wait 120 virtual s = 2 wall s
    timeline = [
        (1.0, RunState.Dispatched),
        (2.5, RunState.Running),
        (2.0 + (1 + 600) / 60 - 0.01, RunState.Running),
        (2.0 + (1 + 600) / 60 + 0.01, RunState.Succeeded),
    ]
    for wall, want in timeline:
        clock.t = T0 + wall
        st = a.status([h])["run-1"]
        assert st.state is want, (wall, st)
        assert st.simulated
    assert st.exit_code == 0
    assert st.started_at.timestamp() == pytest.approx(T0 + 2)
    assert st.finished_at.timestamp() == pytest.approx(T0 + 2 + 601 / 60)
    assert st.bytes_in == 125_000_000
    assert [r.name for r in st.outputs] == ["report", "log"]
    assert all(r.simulated for r in st.outputs)
    log_blob = store.blobs[("wf-1", "log")]
    assert st.bytes_out == 10 * 2**20 + len(log_blob)
    body = json.loads(store.blobs[("wf-1", "report")])
    assert body["simulated"] is True and body["task"] == "t" and body["runId"] == "run-1"
    assert body["declaredSize"] == 10 * 2**20
    assert "[simulated]" in st.output_tail and "cloud-test/part" in st.output_tail
    assert "virtual runtime 10m00s" in st.output_tail
    puts = store.puts
    a.status([h])  # asking again stores nothing new
    assert store.puts == puts
    assert a.logs(h, tail=1) == st.output_tail.splitlines()[-1]
    assert node(a, "part").free.cpu == 128  # finished work holds nothing


def test_default_work_and_cpu_capped_by_node(env):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    h = a.submit(trun(task(resources={"cpu": 64})), node(a, "gpu"), "r")  # 8 cores × 2.0
    assert h.data["runtimeV"] == pytest.approx(DEFAULT_WORK_CORE_S / (2.0 * 8))
    clock.advance(DEFAULT_WORK_CORE_S / 16 / 60 + 0.001)
    assert a.status([h])["r"].state is RunState.Succeeded


def test_energy_matches_linear_model(env):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    t = task(resources={"cpu": 4, "gpu": 1}, work=4 * 3600)  # 1 h on 4 of 8 cores × 2.0
    h = a.submit(trun(t), node(a, "gpu"), "r")
    runtime = 4 * 3600 / (2.0 * 4)
    clock.advance(runtime / 60 + 1)
    st = a.status([h])["r"]
    f = 4 / 8
    watts = f * 100 + f * (300 - 100) + 1 * 70
    assert st.state is RunState.Succeeded
    assert st.energy_j == pytest.approx(runtime * watts)


@pytest.mark.parametrize(
    ("rate", "timeout", "reason", "end_v"),
    [
        (1.0, None, "simulated failure", None),  # at a drawn point of the runtime
        (0.0, "5m", "timeout", 300.0),
        (0.0, None, "", 600.0),
    ],
)
def test_failures(env, rate, timeout, reason, end_v):
    clock, store, ctx = env
    a = SimAdapter(site(failureRate=rate), ctx)
    t = task(resources={"cpu": 1}, work=600, timeout=timeout,
             outputs=[{"name": "o", "path": "o.json"}])
    h = a.submit(trun(t), node(a, "c5-0"), "r")
    if end_v is not None:
        assert h.data["endV"] == pytest.approx(end_v)
    else:
        assert 0 <= h.data["endV"] <= 600
    clock.advance(600 / 60 + 1)
    st = a.status([h])["r"]
    if reason:
        assert st.state is RunState.Failed and st.exit_code == 1 and st.reason == reason
        assert st.outputs == [] and store.puts == 0
        assert st.energy_j == pytest.approx(h.data["endV"] * 1 / 16 * 300)
        assert reason in st.output_tail
    else:
        assert st.state is RunState.Succeeded and st.exit_code == 0


def test_failure_draw_is_deterministic_per_run_id(env):
    _, _, ctx = env
    outcomes = []
    for _ in range(2):
        a = SimAdapter(site(failureRate=0.5), ctx)
        hs = [a.submit(trun(task(), f"r{i}"), node(a, "c5-0"), f"r{i}") for i in range(40)]
        outcomes.append([h.data["outcome"] for h in hs])
        for h in hs:
            a.release(h)
    assert outcomes[0] == outcomes[1]
    assert 5 < outcomes[0].count("failed") < 35


def test_cancel(env):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    h = a.submit(trun(task(work=6000)), node(a, "c5-0"), "r")
    clock.advance(10)  # 600 virtual seconds into a 6000 s run
    a.cancel(h)
    a.cancel(h)  # idempotent
    clock.advance(1000)
    st = a.status([h])["r"]
    assert st.state is RunState.Cancelled and st.outputs == []
    assert st.finished_at.timestamp() == pytest.approx(T0 + 10)
    assert st.energy_j == pytest.approx(600 * 300 / 16)
    assert node(a, "c5-0").free.cpu == 16
    # a cancelled handle as persisted re-adopts as Cancelled
    b = SimAdapter(site(), AdapterContext(artifacts=MemoryArtifacts(), state_dir=None,
                                          clock=clock))
    assert b.status([Handle.from_json(h.to_json())])["r"].state is RunState.Cancelled


def test_service_runs_until_cancelled(env):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    h = a.submit(trun(task(kind="service")), node(a, "c5-1"), "svc")
    clock.advance(10**6)
    assert a.status([h])["svc"].state is RunState.Running
    a.cancel(h)
    assert a.status([h])["svc"].state is RunState.Cancelled


def test_readoption_by_new_instance(env, tmp_path):
    clock, store, _ = env
    ctx1 = AdapterContext(artifacts=store, state_dir=None, clock=clock)
    a = SimAdapter(site(), ctx1)
    t = task(resources={"cpu": 6, "memory": "4Gi"}, work=6 * 1200,
             outputs=[{"name": "m", "path": "m.pkl", "size": 1000}])
    h = a.submit(trun(t), node(a, "c5-1"), "run-7")
    persisted = json.loads(json.dumps(h.to_json()))  # what the control plane stores
    clock.advance(5)

    b = SimAdapter(site(), AdapterContext(artifacts=store, state_dir=None, clock=clock))
    st = b.status([Handle.from_json(persisted)])["run-7"]
    assert st.state is RunState.Running
    n = node(b, "c5-1")
    assert n.free.cpu == 10 and n.free.memory == 60 * 2**30
    assert n.utilisation == pytest.approx(6 / 16)
    clock.advance(1200 / 60)
    st = b.status([Handle.from_json(persisted)])["run-7"]
    assert st.state is RunState.Succeeded and st.outputs[0].simulated
    assert st.bytes_out == 1000


def test_journal_keeps_submit_idempotent_across_restarts(env):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    h = a.submit(trun(task()), node(a, "c5-0"), "run-1")
    clock.advance(0.2)
    b = SimAdapter(site(), ctx)  # same state_dir
    assert node(b, "c5-0").free.cpu == 15
    h2 = b.submit(trun(task()), node(b, "c5-0"), "run-1")
    assert h2.to_json() == h.to_json()
    b.release(h2)
    assert SimAdapter(site(), ctx).inventory()[0].free.cpu == 16


def test_status_ignores_foreign_handles(env):
    _, _, ctx = env
    a = SimAdapter(site(), ctx)
    foreign = Handle(site="other", run_id="x", backend_id="slurm-1", node="n", data={})
    assert a.status([foreign]) == {}
    assert "unknown" in a.logs(foreign)


@pytest.mark.parametrize(
    ("node_name", "resources"),
    [("gpu", {"gpu": 3}), ("c5-0", {"memory": "65Gi"})],
)
def test_submit_rejects_impossible_requests(env, node_name, resources):
    from continuum.errors import PermanentError

    _, _, ctx = env
    a = SimAdapter(site(), ctx)
    with pytest.raises(PermanentError):
        a.submit(trun(task(resources=resources)), node(a, node_name), "r")


def test_journal_tolerates_bad_lines_and_compacts(env, tmp_path):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    hs = [a.submit(trun(task(work=7200), f"r{i}"), node(a, "c5-0"), f"r{i}") for i in range(3)]
    a.release(hs[0])
    journal = tmp_path / "sim-cloud-test.jsonl"
    with journal.open("a") as f:
        f.write("{not json\n")
    b = SimAdapter(site(), ctx)
    assert node(b, "c5-0").free.cpu == 14
    assert len(journal.read_text().splitlines()) == 2  # compacted to the live runs


def test_status_answers_only_own_site_handles(env):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    h = a.submit(trun(task()), node(a, "c5-0"), "r")
    other = Handle.from_json({**h.to_json(), "site": "elsewhere", "runId": "r2"})
    assert list(a.status([h, other])) == ["r"]


def test_record_lists_each_started_run_once_across_restarts(env, tmp_path):
    clock, _, ctx = env
    a = SimAdapter(site(), ctx)
    h = a.submit(trun(task(work=60)), node(a, "c5-0"), "run-1")
    a.submit(trun(task(work=60)), node(a, "c5-0"), "run-1")  # idempotent: not started again
    a.release(h)
    b = SimAdapter(site(), ctx)  # a restart compacts the journal, never the record
    b.submit(trun(task(work=60)), node(b, "c5-0"), "run-1")  # released: started again
    b.submit(trun(task(work=7200), "run-2"), node(b, "c5-1"), "run-2")
    with record_path(tmp_path, "cloud-test").open("a") as f:
        f.write('{"handle": {"torn')  # a control plane killed mid-write
    got = read_record(tmp_path, "cloud-test")
    assert [r.run_id for r in got] == ["run-1", "run-1", "run-2"]
    assert got[0].to_json() == h.to_json()
    assert record_state(got[2], clock()) is RunState.Running
    clock.advance(60 / 60)
    assert record_state(got[0], clock()) is RunState.Succeeded
    assert read_record(tmp_path / "nowhere", "cloud-test") == []


def test_submit_finds_a_run_another_replica_journaled(env, tmp_path):
    # two control-plane replicas on one state directory, each with its own adapter: the
    # new leader re-submits a run the old one submitted but did not record as Dispatched
    clock, _, ctx = env
    old, new = SimAdapter(site(), ctx), SimAdapter(site(), ctx)
    h = old.submit(trun(task(work=7200)), node(old, "c5-0"), "run-1")
    clock.advance(1)
    assert new.submit(trun(task(work=7200)), node(new, "c5-0"), "run-1").to_json() == h.to_json()
    assert node(new, "c5-0").free.cpu == 15
    assert [r.run_id for r in read_record(tmp_path, "cloud-test")] == ["run-1"]
    new.release(h)  # released (journaled "del"): a later submit starts it anew
    fresh = SimAdapter(site(), ctx)
    fresh.submit(trun(task(work=7200)), node(fresh, "c5-0"), "run-1")
    assert [r.run_id for r in read_record(tmp_path, "cloud-test")] == ["run-1", "run-1"]


def test_journal_lookups_read_on_from_where_they_stopped(env, tmp_path):
    # the new leader's adapter looks up each unknown request id in the journal: what the
    # old one journaled after an earlier lookup is found too, a release (del) is seen,
    # and a compaction (the file replaced) is read again from its start
    clock, _, ctx = env
    old, new = SimAdapter(site(), ctx), SimAdapter(site(), ctx)
    assert new._journaled("run-1") is None
    h1 = old.submit(trun(task(work=7200)), node(old, "c5-0"), "run-1")
    assert new._journaled("run-1").to_json() == h1.to_json()
    h2 = old.submit(trun(task(work=7200)), node(old, "c5-0"), "run-2")
    old.release(h1)
    assert new._journaled("run-2").to_json() == h2.to_json()
    assert SimAdapter(site(), ctx)._journaled("run-1") is None  # released
    third = SimAdapter(site(), ctx)  # starting, it compacts the journal to run-2 alone
    h3 = third.submit(trun(task(work=7200)), node(third, "c5-0"), "run-3")
    assert new._journaled("run-3").to_json() == h3.to_json()


def test_own_journal_lines_are_not_parsed_again_but_others_are(env, tmp_path, monkeypatch):
    # a submit looks its request id up in the journal from where the last lookup
    # stopped: this instance's own lines right after that point count as read (not
    # decoded again), a line another instance wrote in between is read as before
    clock, _, ctx = env
    a, b = SimAdapter(site(), ctx), SimAdapter(site(), ctx)
    journal = tmp_path / "sim-cloud-test.jsonl"
    a.submit(trun(task(work=7200)), node(a, "c5-0"), "run-1")
    a.submit(trun(task(work=7200)), node(a, "c5-0"), "run-2")  # reads run-1's line once
    assert a._journal_pos == journal.stat().st_size
    decoded: list[str] = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda s, **kw: decoded.append(s) or loads(s, **kw))
    a.submit(trun(task(work=7200)), node(a, "c5-0"), "run-3")
    assert decoded == []  # its own run-2 and run-3 lines: counted, not decoded
    hb = b.submit(trun(task(work=7200)), node(b, "c5-0"), "run-b")
    decoded.clear()
    a.submit(trun(task(work=7200)), node(a, "c5-0"), "run-4")
    assert len(decoded) == 1  # b's line, once
    assert a._journal_pos == journal.stat().st_size
    assert set(a._journal_runs) == {"run-1", "run-2", "run-3", "run-b", "run-4"}
    b.release(hb)
    assert a._journaled("run-b") is None  # b's release seen
    a.release(a._runs["run-4"])
    assert "run-4" not in a._journal_runs  # its own release counted
    assert a._journaled("run-4") is None
