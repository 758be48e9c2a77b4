"""Learned predictors.

Aspects: they learn a known synthetic relation (Amdahl's law plus a tier effect) and
beat the analytic model on it; an out-of-distribution request falls back to the
analytic model and the decision says so; untrained → analytic; model sets persist
with increasing versions, as strict JSON metadata, and a set that does not load is
logged and the previous version served; a twin bootstrap trains; queue waits are scored
as an MAE in seconds (all-zero waits of an idle Slurm cluster included); the energy
evaluation uses no held-out row through the runtime model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from placement import Snapshot, default_framework, place
from placement.learned import LearnedPredictor, ModelSet, ModelStore, Sample, mape, train, twin_history
from placement.predict import AnalyticPredictor
from tests.placement.placement_factories import GI, network, node, request, task

SERIAL = 0.2


def truth(work: float, cpu: float, speed: float, tier: str) -> float:
    """Amdahl's law with serial fraction 0.2, devices 1.5× slower (throttling)."""
    rt = work / speed * (SERIAL + (1 - SERIAL) / cpu)
    return rt * (1.5 if tier == "device" else 1.0)


def samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cap = float(rng.choice([4, 8, 16]))
        cpu = float(rng.choice([1, 2, 4]))
        speed = float(rng.choice([0.5, 1.0, 1.5]))
        tier = str(rng.choice(["device", "cloud"]))
        work = float(np.exp(rng.uniform(np.log(10), np.log(5000))))
        rt = truth(work, cpu, speed, tier) * float(rng.lognormal(0, 0.02))
        out.append(Sample(work, cpu, GI, 0, speed, cap, tier, 50.0, 200.0, 0.0, 0.0, rt,
                          rt * 200.0 * cpu / cap))
    return out


def test_learns_a_known_relation_and_beats_the_analytic_model() -> None:
    models = train(samples(1500))
    rt = models["runtime"]
    assert rt.metric == "mape_percent" and rt.error < 10.0
    assert rt.error < rt.analytic_error / 3
    # and on fresh nodes through the Predictor interface
    lp = LearnedPredictor(ModelSet(1, 0.0, "test", models))
    nodes = [node("s/a", 8, speed=1.0, tier="cloud"), node("s/b", 16, speed=1.5, tier="device")]
    snap = Snapshot(nodes=nodes, network=network())
    t = task("t", 4, GI, work=800.0)
    want = np.array([truth(800.0, 4, 1.0, "cloud"), truth(800.0, 4, 1.5, "device")])
    learned, analytic = lp.runtime_s(t, snap), AnalyticPredictor().runtime_s(t, snap)
    assert mape(learned, want) < mape(analytic, want) / 3
    assert lp.version == "learned-v1"


def test_out_of_distribution_request_falls_back_and_the_decision_says_so() -> None:
    lp = LearnedPredictor(ModelSet(4, 0.0, "test", train(samples(800))))
    snap = Snapshot(nodes=[node("s/a", 8, speed=1.0)], network=network())
    huge = task("huge", 2, GI, work=5e7)  # far beyond the trained 10..5000 core-s
    assert np.allclose(lp.runtime_s(huge, snap), AnalyticPredictor().runtime_s(huge, snap))
    out = place([request(huge)], snap.copy(), default_framework(lp))[0]
    assert out.decision is not None
    assert out.decision.model_version == "analytic-v1"
    assert any("out of the learned model's distribution" in r and "log_work" in r
               for r in out.decision.reasons)
    ok = place([request(task("ok", 2, GI, work=300.0))], snap.copy(), default_framework(lp))[0]
    assert ok.decision is not None and ok.decision.model_version == "learned-v4"


def test_untrained_predictor_is_the_analytic_model() -> None:
    lp = LearnedPredictor(None)
    snap = Snapshot(nodes=[node("s/a", 8)], network=network())
    t = task("t", 2, GI, work=300.0)
    assert lp.version == "analytic-v1"
    assert np.array_equal(lp.runtime_s(t, snap), AnalyticPredictor().runtime_s(t, snap))
    assert lp.fallback(t, snap, 0) is not None


def test_model_sets_persist_with_increasing_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.load_latest() is None
    m = train(samples(300))
    assert store.save(m, "test").version == 1
    assert store.save(m, "test").version == 2
    loaded = store.load_latest()
    assert loaded is not None and loaded.version == 2
    assert set(loaded.models) == {"runtime", "energy"}
    assert (tmp_path / "models" / "models-v2.json").read_text().count('"target"') == 2


def test_a_model_set_that_does_not_load_is_logged_and_the_previous_one_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ModelStore(tmp_path / "models")
    m = train(samples(300))
    store.save(m, "test")
    store.save(m, "test")
    bad = tmp_path / "models" / "models-v3.joblib"
    bad.write_bytes(b"not a pickle")
    with caplog.at_level(logging.WARNING, logger="placement.learned"):
        loaded = store.load_latest()
    assert loaded is not None and loaded.version == 2
    assert any(str(bad) in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert store.save(m, "test").version == 4  # never overwrites the unreadable file
    for v in (2, 4):  # nothing loads: no model, each failure said
        (tmp_path / "models" / f"models-v{v}.joblib").write_bytes(b"")
    (tmp_path / "models" / "models-v1.joblib").write_bytes(b"junk")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="placement.learned"):
        assert store.load_latest() is None
    assert len([r for r in caplog.records if "cannot load model set" in r.getMessage()]) == 4


def idle_slurm(n: int, seed: int = 0) -> list[Sample]:
    """Slurm partitions of an idle cluster: every observed queue wait is 0."""
    out = samples(n, seed)
    for s in out:
        s.slurm, s.queue_wait_s = True, 0.0
    return out


def test_queue_wait_is_scored_as_mae_seconds_even_when_every_wait_is_zero(
        tmp_path: Path) -> None:
    models = train(idle_slurm(300))
    qw = models["queue_wait"]
    assert qw.metric == "mae_seconds" and models["runtime"].metric == "mape_percent"
    assert qw.error == pytest.approx(0.0, abs=1.0) and qw.analytic_error == 0.0
    # waits of 0..100 s: the error is in seconds, not a percentage of a 0 s wait
    busy = samples(300, seed=1)
    rng = np.random.default_rng(0)
    for s in busy:
        s.slurm, s.queue_wait_s = True, float(rng.uniform(0, 100))
    noisy = train(busy)["queue_wait"]
    assert 10.0 < noisy.error < 40.0  # ≈ 25 s: the spread of a uniform 0..100 s wait
    store = ModelStore(tmp_path / "models")
    ms = store.save(models, "idle slurm")

    def strict(name: str) -> float:
        raise ValueError(f"{name} in the metadata JSON")

    meta = json.loads((tmp_path / "models" / "models-v1.json").read_text(),
                      parse_constant=strict)
    q = next(m for m in meta if m["target"] == "queue_wait")
    assert q["metric"] == "mae_seconds" and q["error"] is not None
    assert [i.metric for i in ms.info()] == ["mape_percent", "mae_seconds", "mape_percent"]


def test_metadata_of_an_undefined_error_is_null(tmp_path: Path) -> None:
    models = train(samples(300))
    models["energy"].error = float("nan")
    models["energy"].analytic_error = float("inf")
    ModelStore(tmp_path / "models").save(models, "test")
    meta = json.loads((tmp_path / "models" / "models-v1.json").read_text())
    energy = next(m for m in meta if m["target"] == "energy")
    assert energy["error"] is None and energy["analytic_error"] is None


def test_energy_evaluation_sees_no_held_out_row_through_the_runtime_model() -> None:
    """Runtimes carry unpredictable per-run noise; energy is exactly runtime × power.

    The energy correction is then 0, so the energy error on held-out rows is the
    runtime model's error on them: equal to the runtime target's own held-out error.
    A runtime model refitted on all rows (the held-out ones included) would have seen
    those runs' noise and make the energy error look far smaller."""
    rng = np.random.default_rng(3)
    out = samples(400, seed=3)
    for s in out:
        s.runtime_s *= float(rng.lognormal(0.0, 0.8))
        s.energy_j = s.runtime_s * 200.0 * s.cpu / s.cap_cpu
    models = train(out)
    rt, en = models["runtime"], models["energy"]
    assert rt.error > 30.0  # the noise is not learnable
    assert en.error == pytest.approx(rt.error, rel=0.02)


def test_twin_bootstrap_trains_all_targets_it_has_data_for() -> None:
    nodes = [node("s/a", 8), node("s/b", 4, speed=0.5, tier="edge")]
    hist = twin_history(nodes, 300)
    assert len(hist) == 300
    models = train(hist)
    assert {"runtime", "energy"} <= set(models)
    assert "queue_wait" not in models  # no Slurm node, no queue-wait data
    assert models["runtime"].error < 5.0  # the twin is the analytic model: easy to learn


def test_prefetch_predicts_all_task_classes_in_one_call_per_target() -> None:
    models = train(samples(600))
    nodes = [node(f"a/n{i}", cap, speed=sp, tier=t)
             for i, (cap, sp, t) in enumerate([(4, 0.5, "device"), (8, 1.0, "cloud"),
                                               (16, 1.5, "cloud")])]
    tasks = [task(f"t{k}", cpu=c, work=w) for k, (c, w) in
             enumerate([(1, 100.0), (2, 300.0), (4, 1000.0), (2, 50.0)])]
    plain = LearnedPredictor(ModelSet(1, 0.0, "test", models))
    want = [plain.runtime_s(t, Snapshot(nodes=nodes, network=network())) for t in tasks]

    fetched = LearnedPredictor(ModelSet(1, 0.0, "test", models))
    snap = Snapshot(nodes=nodes, network=network())
    calls = {"n": 0}
    rt_model = models["runtime"].model
    inner = rt_model.predict

    def counting(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        return inner(x)

    rt_model.predict = counting
    try:
        fetched.prefetch(tasks, snap)
        got = [fetched.runtime_s(t, snap) for t in tasks]
    finally:
        del rt_model.predict
    assert calls["n"] == 1  # one call for 4 task classes × 3 nodes, then lookups
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12)
