"""``continuum cluster add`` / ``data-sources`` against a live control plane and the stand-in.

Aspects: a kubeconfig uploaded (content) and one sent as a server-side path, with a
context; a refused registration exits 1 with the reason; an unreadable kubeconfig file;
the devices table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from control_plane.cli import app
from tests.adapters.kubernetes.apiserver import ApiServer
from tests.control_plane.harness import served

runner = CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with served(tmp_path / "state") as u:
        yield u


def test_cluster_add_and_data_sources(url: str, apiserver: ApiServer, tmp_path: Path) -> None:
    apiserver.add_node("edge-1", labels={"node-role.kubernetes.io/edge": ""})
    apiserver.add_device("thermo-01", "edge-1")
    kc = tmp_path / "edge.kubeconfig"
    kc.write_text(yaml.safe_dump(apiserver.kubeconfig(context="edge")))
    r = runner.invoke(app, ["cluster", "add", "edge", str(kc), "--kind", "kubeedge",
                            "--context", "edge", "--location", "dc", "--url", url, "-o", "json"])
    assert r.exit_code == 0, r.output
    site = json.loads(r.output)
    assert (site["kind"], site["health"], site["nodes"]) == ("kubeedge", "Ready", 3)
    assert site["config"]["kubeconfig"] == "<redacted>"

    r = runner.invoke(app, ["cluster", "add", "k8s", str(kc), "--url", url])
    assert r.exit_code == 0, r.output
    assert "k8s" in r.output and "Ready" in r.output

    r = runner.invoke(app, ["cluster", "data-sources", "--url", url])
    assert r.exit_code == 0, r.output
    assert "thermo-01" in r.output and "edge/edge-1" in r.output

    bad = tmp_path / "bad.kubeconfig"
    bad.write_text(yaml.safe_dump(apiserver.kubeconfig(token="expired")))
    r = runner.invoke(app, ["cluster", "add", "bad", str(bad), "--url", url])
    assert r.exit_code == 1 and "401 Unauthorized" in r.output

    r = runner.invoke(app, ["cluster", "add", "x", str(tmp_path / "missing"), "--url", url])
    assert r.exit_code == 1 and "cannot read the kubeconfig" in r.output


@pytest.mark.parametrize("args", [["cluster"], ["cluster", "add"], ["cluster", "data-sources"]])
def test_help(args: list[str]) -> None:
    r = runner.invoke(app, [*args, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output, r.output
