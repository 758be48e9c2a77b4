"""Models and preview routes, and the ``continuum model`` CLI.

Aspects: an untrained control plane serves the analytic model; ``POST
/v1/models:retrain`` trains from the twin (and the store), saves a new version, serves
it and exports MAPE per target on ``/metrics``; a restarted control plane loads the
latest version; bad sources and nothing-to-train-on are clear 422s; recorded runs are
training samples; ``POST /v1/placements:preview`` returns the plan and its predicted
completion, energy and bytes moved without creating anything, and rejects invalid
documents like submission does; decisions carry the learned model's version; the
retrain schedule counts from the latest set's training time across restarts, and keeps a set
learned from recorded runs once retention deleted them all; queue
waits are scored as an MAE in seconds (an idle Slurm cluster's all-zero waits included),
served, stored and exported as such; a model swap that lands in the middle of a
placement batch does not mix versions within it.
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from control_plane import cli_model
from tests.control_plane.harness import control_plane, wait_state, workflow


def test_models_untrained_then_retrained(tmp_path: Path) -> None:
    with control_plane(tmp_path, model_bootstrap_samples=400) as (cp, api):
        view = api.get("/v1/models").json()
        assert view["version"] == "analytic-v1" and view["targets"] == []
        r = api.post("/v1/models:retrain", params={"source": "twin"})
        assert r.status_code == 200, r.text
        view = r.json()
        assert view["version"] == "learned-v1"
        assert view["trainedOn"] == {"recorded": 0, "twin": 400}
        targets = {t["target"]: t for t in view["targets"]}
        assert set(targets) == {"runtime", "energy"}
        assert targets["runtime"]["metric"] == "mape_percent"
        assert targets["runtime"]["error"] < 5.0 and targets["runtime"]["samples"] == 400
        metrics = api.get("/metrics").text
        assert 'continuum_model_mape_percent{model="learned",target="runtime"}' in metrics
        assert "continuum_model_version 1.0" in metrics
        assert (tmp_path / "models" / "models-v1.joblib").exists()
        # decisions now name the learned model
        wf = api.post("/v1/workflows", json=workflow("learned")).json()["id"]
        assert wait_state(api, wf, ("Succeeded", "Failed"))["state"] == "Succeeded"
        runs = api.get("/v1/runs", params={"workflow": wf}).json()["items"]
        assert {api.get(f"/v1/runs/{r['id']}").json()["placement"]["modelVersion"]
                for r in runs} == {"learned-v1"}
        # those runs are now training samples
        again = api.post("/v1/models:retrain", params={"source": "auto"}).json()
        assert again["version"] == "learned-v2" and again["trainedOn"]["recorded"] == 2
    with control_plane(tmp_path) as (cp, api):
        assert api.get("/v1/models").json()["version"] == "learned-v2"


def test_retrain_errors(tmp_path: Path) -> None:
    with control_plane(tmp_path) as (_, api):
        r = api.post("/v1/models:retrain", params={"source": "magic"})
        assert r.status_code == 422
        assert "unknown training source 'magic'" in r.text and "auto, store, twin" in r.text
        r = api.post("/v1/models:retrain", params={"source": "store"})
        assert r.status_code == 422 and "no samples to train on from 'store'" in r.text


def test_preview_plans_without_running(tmp_path: Path) -> None:
    with control_plane(tmp_path) as (_, api):
        doc = workflow("what-if", [
            {"name": "a", "command": ["true"], "work": 100,
             "outputs": [{"name": "x", "path": "x", "size": "1Gi"}]},
            {"name": "b", "command": ["true"], "work": 300, "inputs": [{"name": "x"}]},
        ])
        r = api.post("/v1/placements:preview", json=doc)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [p["task"] for p in body["plan"]] == ["a", "b"]
        assert body["unschedulable"] == []
        pa, pb = (p["predicted"] for p in body["plan"])
        # the total is rounded to the millisecond (routes_models.py), the parts are not
        assert body["predicted"]["completionS"] >= pa["completionS"] + pb["completionS"] - 5e-4
        assert body["predicted"]["energyJ"] > 0
        assert body["predicted"]["bytesMoved"] == pa.get("bytesMoved", 0) + pb.get("bytesMoved", 0)
        assert api.get("/v1/workflows").json()["items"] == []  # nothing was created
        bad = api.post("/v1/placements:preview", json={**doc, "kind": "Job"})
        assert bad.status_code == 422 and "kind" in bad.text
        huge = workflow("huge", [{"name": "a", "command": ["true"],
                                  "resources": {"cpu": 4, "memory": "1Gi"}},
                                 {"name": "b", "command": ["true"],
                                  "resources": {"cpu": 8, "memory": "1Gi"}},
                                 {"name": "c", "command": ["true"],
                                  "resources": {"cpu": 8, "memory": "1Gi"}}])
        body = api.post("/v1/placements:preview", json=huge).json()
        assert [u["task"] for u in body["unschedulable"]] == ["c"]
        assert "nodes lack cpu" in body["unschedulable"][0]["reason"]


def test_cli_model_train_and_eval(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with control_plane(tmp_path, model_bootstrap_samples=300) as (_, api):
        class Local:
            def __init__(self, url: str, timeout: float = 10.0) -> None:
                pass

            def __enter__(self):  # type: ignore[no-untyped-def]
                return self

            def __exit__(self, *_: object) -> None:
                pass

            def _call(self, method: str, path: str, **kw):  # type: ignore[no-untyped-def]
                r = api.request(method, path, **kw)
                if r.status_code >= 400:
                    from control_plane.client import ApiError
                    raise ApiError(r.status_code, r.json().get("detail"))
                return r.json()

        monkeypatch.setattr(cli_model, "Client", Local)
        runner = CliRunner()
        res = runner.invoke(cli_model.app, ["eval"])
        assert res.exit_code == 0 and "untrained" in res.output
        res = runner.invoke(cli_model.app, ["train", "--source", "twin"])
        assert res.exit_code == 0, res.output
        assert "trained on 0 recorded + 300 twin runs" in res.output and "runtime" in res.output
        assert "MAPE" in res.output and "n/a" not in res.output
        res = runner.invoke(cli_model.app, ["train", "--source", "nope"])
        assert res.exit_code == 1 and "unknown training source" in res.output


def test_scheduled_retrain(tmp_path: Path) -> None:
    from tests.helpers import wait_for

    with control_plane(tmp_path, model_retrain_interval_s=0.2,
                       model_bootstrap_samples=200) as (_, api):
        wait_for(lambda: api.get("/v1/models").json()["version"] == "learned-v1", 30,
                 message="the scheduled retrain to serve learned-v1")
        view = api.get("/v1/models").json()
        assert view["retrainIntervalS"] == 0.2
        assert all(t["source"].startswith("auto:") for t in view["targets"])


def test_the_retrain_schedule_survives_a_restart(tmp_path: Path) -> None:
    """The schedule counts from the served set's training time, not from the start."""
    import time

    import joblib

    from tests.helpers import wait_for

    with control_plane(tmp_path, model_bootstrap_samples=200) as (_, api):
        assert api.post("/v1/models:retrain", params={"source": "twin"}).status_code == 200
    # v1 was trained two hours ago (as if the control plane had been down since)
    path = tmp_path / "models" / "models-v1.joblib"
    ms = joblib.load(path)
    ms.trained_at = time.time() - 7200
    joblib.dump(ms, path)
    with control_plane(tmp_path, model_retrain_interval_s=3600,
                       model_bootstrap_samples=200) as (cp, api):
        # overdue: retrained at once, not an hour after this start
        wait_for(lambda: api.get("/v1/models").json()["version"] == "learned-v2", 30,
                 message="the overdue retrain to serve learned-v2")
    with control_plane(tmp_path, model_retrain_interval_s=3600,
                       model_bootstrap_samples=200) as (cp, api):
        # v2 is fresh: a restart does not retrain
        target = cp.reconciler.cycles + 40
        wait_for(lambda: cp.reconciler.cycles >= target, 30, message="40 cycles")
        assert api.get("/v1/models").json()["version"] == "learned-v2"
        assert not (tmp_path / "models" / "models-v3.joblib").exists()


def test_a_scheduled_retrain_keeps_a_set_that_learned_from_runs_retention_deleted(
        tmp_path: Path) -> None:
    """After a quiet retention window the store holds no run: the schedule must not
    replace a set learned from recorded runs with one from the twin alone (an operator's
    retrain still may)."""
    import time

    import pytest

    from continuum.errors import ValidationFailed
    from tests.helpers import wait_for

    with control_plane(tmp_path, model_bootstrap_samples=200, model_retrain_interval_s=3600,
                       workflow_retention_s=0.001) as (cp, api):
        wf = api.post("/v1/workflows", json=workflow("learn")).json()["id"]
        assert wait_state(api, wf, ("Succeeded", "Failed"))["state"] == "Succeeded"
        v1 = api.post("/v1/models:retrain", params={"source": "auto"}).json()
        assert v1["version"] == "learned-v1" and v1["trainedOn"]["recorded"] == 2
        wait_for(lambda: cp.retention.sweep(time.time()) is not None
                 and api.get(f"/v1/workflows/{wf}").status_code == 404, 20,
                 message="retention to delete the finished workflow and its runs")
        with pytest.raises(ValidationFailed, match="no recorded run left"):
            cp.models.retrain("auto", scheduled=True)
        assert api.get("/v1/models").json()["version"] == "learned-v1"
        assert not (tmp_path / "models" / "models-v2.joblib").exists()
        again = api.post("/v1/models:retrain", params={"source": "auto"}).json()
        assert again["version"] == "learned-v2" and again["trainedOn"]["recorded"] == 0


def test_idle_slurm_queue_waits_are_scored_in_seconds(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An idle Slurm cluster: every queue wait is 0, where a percentage error is
    undefined; the queue-wait error is an MAE in seconds, in the API, the stored
    metadata (strict JSON) and on /metrics."""
    import json

    from continuum.model import SiteKind
    from control_plane import models
    from placement.learned import twin_history

    def idle_slurm_history(nodes, n):  # type: ignore[no-untyped-def]
        # the twin's history of these nodes as Slurm partitions with nothing queued
        return twin_history([nd.model_copy(update={"site_kind": SiteKind.slurm,
                                                   "queue_wait_s": 0.0}) for nd in nodes], n)

    monkeypatch.setattr(models, "twin_history", idle_slurm_history)
    with control_plane(tmp_path, model_bootstrap_samples=300) as (_, api):
        r = api.post("/v1/models:retrain", params={"source": "twin"})
        assert r.status_code == 200, r.text
        r = api.get("/v1/models")
        assert r.status_code == 200, r.text
        targets = {t["target"]: t for t in r.json()["targets"]}
        qw = targets["queue_wait"]
        assert qw["metric"] == "mae_seconds" and qw["analyticError"] == 0.0
        assert 0.0 <= qw["error"] < 1.0
        assert targets["runtime"]["metric"] == "mape_percent"
        assert "NaN" not in r.text
        metrics = api.get("/metrics").text
        assert 'continuum_model_mae_seconds{model="analytic",target="queue_wait"} 0.0' in metrics
        assert 'continuum_model_mape_percent{model="learned",target="queue_wait"}' not in metrics

        def strict(name: str) -> float:
            raise ValueError(f"{name} in the metadata JSON")

        meta = json.loads((tmp_path / "models" / "models-v1.json").read_text(),
                          parse_constant=strict)
        q = next(m for m in meta if m["target"] == "queue_wait")
        assert q["metric"] == "mae_seconds" and q["analytic_error"] == 0.0
    with control_plane(tmp_path) as (_, api):  # loaded at start: still served
        r = api.get("/v1/models")
        assert r.status_code == 200 and r.json()["version"] == "learned-v1", r.text


def test_a_swap_in_the_middle_of_a_placement_batch_does_not_mix_versions(
        tmp_path: Path) -> None:
    """v2 is served (as a background retrain would) while a batch placed with v1 is
    between its runtime and its energy prediction: that batch's decisions are v1's
    throughout (runtime, energy, recorded version); the next batch is v2's."""
    from dataclasses import replace

    import pytest

    from continuum.model import Objective, Task
    from placement import PlacementRequest, Snapshot, place
    from placement.learned import LearnedPredictor, ModelSet, train, twin_history

    with control_plane(tmp_path) as (cp, _):
        hist = twin_history(cp.federation.nodes(), 300)
        v1 = ModelSet(1, 0.0, "test", train(hist))
        # v2 learned a world 3× slower that draws twice the power
        v2 = ModelSet(2, 0.0, "test", train([
            replace(s, runtime_s=3 * s.runtime_s, energy_j=6 * (s.energy_j or 0.0))
            for s in hist]))
        runtime_v1 = v1.models["runtime"].model

        class SwapWhilePredicting:
            """v1's runtime model, serving v2 the first time it is asked."""

            swapped = False

            def predict(self, x):  # type: ignore[no-untyped-def]
                if not self.swapped:
                    self.swapped = True
                    cp.models.serve(v2)
                return runtime_v1.predict(x)

        t = Task.model_validate({"name": "t", "command": ["true"], "work": 300,
                                 "resources": {"cpu": 1, "memory": "256Mi"}})

        def batch(fw):  # type: ignore[no-untyped-def]
            snap = Snapshot(nodes=cp.federation.placeable_nodes(), network=cp.network)
            out = place([PlacementRequest("k", t, Objective(), [])], snap, fw)[0]
            assert out.decision is not None, out.reason
            return out.decision, snap

        def expected(ms: ModelSet, snap: Snapshot, node: str) -> tuple[float, float]:
            lp = LearnedPredictor(ms)
            rt = lp.runtime_s(t, snap)
            i = snap.index[node]
            return float(rt[i]), float(lp.energy_j(t, snap, rt)[i])

        cp.models.serve(v1)
        fw = cp.reconciler.framework  # the reference a placement batch holds
        v1.models["runtime"].model = SwapWhilePredicting()
        d, snap = batch(fw)
        v1.models["runtime"].model = runtime_v1
        assert cp.models.predictor.version == "learned-v2"  # the swap did land
        assert d.model_version == "learned-v1"
        rt, e = expected(v1, snap, d.node)
        assert d.predicted.runtime_s == pytest.approx(rt, rel=1e-9)
        assert d.predicted.energy_j == pytest.approx(e, rel=1e-9)

        assert cp.reconciler.framework is cp.models.framework is not fw
        d, snap = batch(cp.reconciler.framework)  # the next batch: v2 throughout
        assert d.model_version == "learned-v2"
        rt2, e2 = expected(v2, snap, d.node)
        assert d.predicted.runtime_s == pytest.approx(rt2, rel=1e-9)
        assert d.predicted.energy_j == pytest.approx(e2, rel=1e-9)
        assert rt2 > 2 * expected(v1, snap, d.node)[0]  # the versions do differ


def test_fragmentation_weight_setting_reaches_the_framework(tmp_path: Path) -> None:
    """``placement_fragmentation_weight`` sets the GpuFragmentation plugin's weight in the
    framework the reconciler places with; 0 switches the term off."""
    from placement.plugins.fragmentation import DEFAULT_WEIGHT

    for kw, expected in (({}, DEFAULT_WEIGHT), ({"placement_fragmentation_weight": 0.0}, 0.0),
                         ({"placement_fragmentation_weight": 2.0}, 2.0)):
        with control_plane(tmp_path / f"state-{expected}", **kw) as (cp, _):
            [frag] = [p for p in cp.reconciler.framework.scores if p.name == "GpuFragmentation"]
            assert frag.weight == expected
