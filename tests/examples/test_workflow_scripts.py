"""The example documents parse, reference what exists, and their scripts really run.

Scripts run in topological order, each in its own temporary working directory with
``python3``; declared outputs are copied to the dependants' inputs by artifact name, as
the control plane does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from graphlib import TopologicalSorter
from pathlib import Path

import pytest
import yaml

from adapters.sim import parse_config
from continuum.federation import FederationDocument, load_federation
from continuum.model import SiteKind, Task, Tier, WorkflowDocument

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORKFLOWS = sorted((EXAMPLES / "workflows").glob("*.yaml"))
DEVICE_CAPACITY = {"cpu": 4.0, "memory": 4 * 2**30}  # pi4 / jetson-nano class
DEMO_DEVICES = {
    "pi-camera-1": {"role": "camera"},
    "jetson-1": {"accelerator": "nvidia-maxwell"},
}


def load_workflow(path: Path) -> WorkflowDocument:
    return WorkflowDocument.model_validate(yaml.safe_load(path.read_text()))


def topo(doc: WorkflowDocument) -> list[Task]:
    by_name = {t.name: t for t in doc.spec.tasks}
    order = TopologicalSorter({t.name: set(t.depends_on) for t in doc.spec.tasks}).static_order()
    return [by_name[n] for n in order]


def test_there_are_examples():
    assert len(WORKFLOWS) >= 2
    assert (EXAMPLES / "federation.yaml").exists()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_parses_and_references_exist(path: Path):
    doc = load_workflow(path)
    assert doc.metadata.name == path.stem
    names = [t.name for t in doc.spec.tasks]
    assert len(names) == len(set(names)), "task names are unique"
    produced: dict[str, str] = {}
    for t in doc.spec.tasks:
        for o in t.outputs:
            assert o.name not in produced, f"artifact {o.name} produced twice"
            produced[o.name] = t.name
    datasets = {d.name for d in doc.spec.datasets}
    topo(doc)  # raises CycleError on a cycle
    for t in doc.spec.tasks:
        assert set(t.depends_on) <= set(names), t.name
        for i in t.inputs:
            assert i.name in produced, f"{t.name}: input {i.name} is produced by no task"
            assert produced[i.name] in t.depends_on, f"{t.name}: must dependOn {produced[i.name]}"
        assert set(t.datasets) <= datasets, t.name
        assert t.script is not None and t.work is not None
        if Tier.device in t.constraints.tiers:
            assert t.constraints.tiers == [Tier.device]
            assert 0.5 <= t.resources.cpu <= 1 and t.resources.memory <= 2**30
            assert t.resources.cpu <= DEVICE_CAPACITY["cpu"]
            if t.constraints.labels:  # some demo device carries the labels
                assert any(t.constraints.labels.items() <= lbl.items()
                           for lbl in DEMO_DEVICES.values()), t.name
    assert any(Tier.device in t.constraints.tiers for t in doc.spec.tasks)
    assert any(t.constraints.tiers and Tier.device not in t.constraints.tiers
               for t in doc.spec.tasks)


def test_federation_parses_and_sim_configs_are_valid():
    doc = load_federation(EXAMPLES / "federation.yaml")
    assert isinstance(doc, FederationDocument) and doc.metadata.name == "demo-continuum"
    kinds = {s.name: s.kind for s in doc.spec.sites}
    assert kinds["factory-devices"] is SiteKind.devices
    tiers = {s.tier for s in doc.spec.sites if s.kind is SiteKind.sim}
    assert tiers == {Tier.edge, Tier.cloud, Tier.hpc}
    for s in doc.spec.sites:
        if s.kind is SiteKind.sim:
            for g in parse_config(s).nodes:
                assert g.power.source, f"{s.name}/{g.name}: power figures need a source"
    locations = {loc.name for loc in doc.spec.locations}
    for path in WORKFLOWS:
        for t in load_workflow(path).spec.tasks:
            if t.slo:
                assert t.slo.target in locations
        for d in load_workflow(path).spec.datasets:
            assert set(d.locations) <= locations | set(kinds)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"]["sites"][1].update(kind="mainframe"), "spec.sites.1.kind"),
        (lambda d: d["spec"]["sites"][0].update(location="mars"), "sites.0.location"),
        (lambda d: d["spec"]["links"][0].update(rttMs=-1), "spec.links.0.rttMs"),
        (lambda d: d["spec"].update(controlPlane={"location": "nowhere"}),
         "controlPlane.location"),
        (lambda d: d["spec"].update(extra=1), "spec.extra"),
        (lambda d: d.update(kind="Workflow"), "kind"),
    ],
)
def test_load_federation_errors_name_file_and_field(tmp_path, mutate, field):
    doc = yaml.safe_load((EXAMPLES / "federation.yaml").read_text())
    mutate(doc)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError) as e:
        load_federation(bad)
    assert str(bad) in str(e.value) and field in str(e.value)


def _run_task(t: Task, workdir: Path, scripts: Path, store: Path) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True)
    for i in t.inputs:
        shutil.copy(store / i.name, workdir / (i.path or i.name))
    script = scripts / f"{t.name}.py"
    script.write_text(t.script.source)
    # `python3` is this interpreter: the one with numpy and scikit-learn installed, as the
    # demo's agents get by having its directory first on their PATH.
    interpreter = [sys.executable if a == "python3" else a for a in t.script.interpreter]
    return subprocess.run([*interpreter, str(script)], cwd=workdir, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_scripts_really_run(tmp_path: Path, path: Path):
    """Every device-tier task runs for real; so do the others (they are small here too)."""
    doc = load_workflow(path)
    store, scripts = tmp_path / "artifacts", tmp_path / "scripts"
    store.mkdir()
    scripts.mkdir()
    results = {}
    for t in topo(doc):
        proc = _run_task(t, tmp_path / "runs" / t.name, scripts, store)
        assert proc.returncode == 0, f"{t.name} exited {proc.returncode}:\n{proc.stderr}"
        for o in t.outputs:
            f = tmp_path / "runs" / t.name / o.path
            assert f.is_file() and f.stat().st_size > 0, f"{t.name}: no {o.path}"
            shutil.copy(f, store / o.name)
        results[t.name] = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    sys.stdout.write(f"\n{path.stem}: {json.dumps(results, indent=1)}\n")
    for name in store.iterdir():
        if name.suffix == ".json" or name.name.endswith(("report", "metrics", "predictions")):
            try:
                report = json.loads(name.read_text())
            except (UnicodeDecodeError, ValueError):
                continue
            for key in ("accuracy", "validation_accuracy", "hold_out_accuracy", "r2"):
                if key in report and isinstance(report[key], float):
                    assert report[key] > 0.5, (name.name, key, report[key])
