"""The ``continuum`` CLI against a live control plane (uvicorn on a free loopback port).

Aspects: ``--help`` everywhere; submit with --watch; get workflows/runs/nodes/sites/devices
(table and json); describe run (the placement explanation) and workflow; cancel; a clear
error when the control plane cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from control_plane.cli import app
from control_plane.client import Client
from tests.conftest import free_port
from tests.control_plane.harness import served, workflow

runner = CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with served(tmp_path / "state") as u:
        yield u


@pytest.mark.parametrize("args", [[], ["get"], ["describe"], ["submit"], ["server"], ["demo"],
                                  ["cancel"], ["get", "runs"], ["describe", "run"]])
def test_help_everywhere(args: list[str]) -> None:
    r = runner.invoke(app, [*args, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output


def test_submit_watch_get_describe(url: str, tmp_path: Path) -> None:
    f = tmp_path / "wf.yaml"
    f.write_text(yaml.safe_dump(workflow("cli-flow")))
    r = runner.invoke(app, ["submit", str(f), "--watch", "--url", url])
    assert r.exit_code == 0, r.output
    assert "accepted" in r.output and "Succeeded" in r.output

    r = runner.invoke(app, ["get", "workflows", "--url", url, "-o", "json"])
    items = json.loads(r.output)["items"]
    assert [(w["name"], w["state"]) for w in items] == [("cli-flow", "Succeeded")]
    wid = items[0]["id"]
    r = runner.invoke(app, ["get", "runs", "--url", url, "--workflow", wid, "-o", "json"])
    runs = json.loads(r.output)["items"]
    assert len(runs) == 2
    for what in ("workflows", "runs", "nodes", "sites", "devices"):
        r = runner.invoke(app, ["get", what, "--url", url])
        assert r.exit_code == 0, r.output
    assert "cloud/vm-0" in runner.invoke(app, ["get", "nodes", "--url", url]).output

    r = runner.invoke(app, ["describe", "run", runs[0]["id"], "--url", url])
    assert r.exit_code == 0, r.output
    assert "Placement scores" in r.output and "Predicted vs observed" in r.output
    assert "why:" in r.output
    r = runner.invoke(app, ["describe", "workflow", wid, "--url", url])
    assert "WorkflowSucceeded" in r.output


def test_cancel_and_errors(url: str) -> None:
    wid = Client(url).submit(workflow("long", [{"name": "x", "command": ["true"],
                                                "work": 10_000_000}]))["id"]
    r = runner.invoke(app, ["cancel", wid, "--url", url])
    assert r.exit_code == 0 and "Cancelling" in r.output
    r = runner.invoke(app, ["describe", "run", "run-nope", "--url", url])
    assert r.exit_code == 1 and "does not exist" in r.output


def test_unreachable_control_plane_says_what_to_do() -> None:
    r = runner.invoke(app, ["get", "workflows", "--url", f"http://127.0.0.1:{free_port()}"])
    assert r.exit_code == 1
    assert "cannot reach the control plane" in r.output and "continuum server" in r.output
