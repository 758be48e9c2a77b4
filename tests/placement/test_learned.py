"""Learned predictors.

Aspects: they learn a known synthetic relation (Amdahl's law plus a tier effect) and
beat the analytic model on it; an out-of-distribution request falls back to the
analytic model and the decision says so; untrained → analytic; model sets persist
with increasing versions; a twin bootstrap trains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
    assert rt.mape < 10.0
    assert rt.mape < rt.analytic_mape / 3
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
    # a corrupt file is reported as "no model", not raised
    (tmp_path / "models" / "models-v3.joblib").write_bytes(b"not a pickle")
    assert store.load_latest() is None


def test_twin_bootstrap_trains_all_targets_it_has_data_for() -> None:
    nodes = [node("s/a", 8), node("s/b", 4, speed=0.5, tier="edge")]
    hist = twin_history(nodes, 300)
    assert len(hist) == 300
    models = train(hist)
    assert {"runtime", "energy"} <= set(models)
    assert "queue_wait" not in models  # no Slurm node, no queue-wait data
    assert models["runtime"].mape < 5.0  # the twin is the analytic model: easy to learn


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
