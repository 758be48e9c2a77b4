"""The demo federation's simulated sites run the heavy example task end to end."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from adapters.base import AdapterContext, ArtifactRecord, TaskRun
from adapters.sim import SimAdapter
from continuum.federation import load_federation
from continuum.model import RunState, SiteKind, WorkflowDocument

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Store:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], ArtifactRecord] = {}

    def put_bytes(self, workflow_id, name, data, *, simulated=False):
        rec = ArtifactRecord(name, hashlib.sha256(data).hexdigest(), len(data), simulated)
        self.records[(workflow_id, name)] = rec
        return rec

    def record(self, workflow_id, name):
        return self.records.get((workflow_id, name))


@pytest.mark.parametrize(("site_name", "node_name"),
                         [("cloud-frankfurt", "c5-0"), ("hpc-garching", "cpu")])
def test_fleet_retrain_runs_on_simulated_site(tmp_path, site_name, node_name):
    fed = load_federation(EXAMPLES / "federation.yaml")
    site = next(s for s in fed.spec.sites if s.name == site_name)
    assert site.kind is SiteKind.sim
    wf = WorkflowDocument.model_validate(
        yaml.safe_load((EXAMPLES / "workflows" / "edge-vision.yaml").read_text()))
    t = next(t for t in wf.spec.tasks if t.name == "fleet-retrain")
    dataset = next(d for d in wf.spec.datasets if d.name == "fleet-frame-archive")
    now = [1_800_000_000.0]
    adapter = SimAdapter(site, AdapterContext(artifacts=Store(), state_dir=tmp_path,
                                              clock=lambda: now[0]))
    node = next(n for n in adapter.inventory() if n.name == node_name)
    assert node.simulated and node.free.cpu >= t.resources.cpu
    run = TaskRun(run_id="run-fr", workflow_id="wf", workflow_name=wf.metadata.name, task=t,
                  dataset_bytes=dataset.size)
    h = adapter.submit(run, node, "run-fr")
    total_v = h.data["queueWaitV"] + h.data["transferV"] + h.data["runtimeV"]
    assert h.data["runtimeV"] == pytest.approx(4 * 3600 / (node.speed * 32))
    now[0] += total_v / h.data["timeScale"] + 0.01
    st = adapter.status([h])["run-fr"]
    if st.state is RunState.Failed:  # the cloud site has a 1 % failure rate
        assert st.reason == "simulated failure"
    else:
        assert st.state is RunState.Succeeded and st.simulated
        assert [o.name for o in st.outputs] == ["sweep-report"] and st.outputs[0].simulated
        assert "[simulated]" in st.output_tail and site_name in st.output_tail
