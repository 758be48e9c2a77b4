"""``continuum sites`` against a live control plane and a real Slurm.

Aspects: ``register slurm`` with a key file and with a token file (table and JSON), the
precise error of an unknown partition (exit code 1), conflicting options (exit code 2),
``drain``/``resume``/``remove``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from control_plane.cli import app
from tests.adapters.slurm.conftest import LiveFactory, SlurmCluster

pytestmark = pytest.mark.slurm
runner = CliRunner()


def test_sites_cli_register_drain_resume_remove(slurm: SlurmCluster, live_cp: LiveFactory,
                                                tmp_path: Path) -> None:
    lcp = live_cp()
    base = ["--url", lcp.url, "--user", slurm.user, "--workdir", slurm.workdir,
            "--slurm-user", "root"]
    r = runner.invoke(app, ["sites", "register", "slurm", "hpc", "--rest-url", slurm.url,
                            "--jwt-key", slurm.key, "-p", "debug", "-p", "short",
                            "--idle-watts", "95", "--max-watts", "310", *base],
                      env={"COLUMNS": "150"})
    assert r.exit_code == 0, r.output
    assert "hpc" in r.output and "Ready" in r.output
    nodes = {n["name"]: n for n in lcp.get("/v1/nodes", params={"site": "hpc"})["items"]}
    assert set(nodes) == {"debug", "short"} and nodes["debug"]["power"]["maxWatts"] == 310

    token_file = tmp_path / "token"
    token_file.write_text(f"SLURM_JWT={slurm.token(600)}\n")
    r = runner.invoke(app, ["sites", "register", "slurm", "hpc2", "--rest-url", slurm.url,
                            "--token-file", str(token_file), "--json", *base])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["health"] == "Ready"

    r = runner.invoke(app, ["sites", "register", "slurm", "hpc3", "--rest-url", slurm.url,
                            "--jwt-key", slurm.key, "-p", "gpu", *base], env={"COLUMNS": "200"})
    assert r.exit_code == 1
    assert "'gpu' is not a partition of this cluster (it has debug, short)" in r.output

    r = runner.invoke(app, ["sites", "register", "slurm", "hpc4", "--rest-url", slurm.url,
                            "--token", "x", "--token-file", str(token_file), *base])
    assert r.exit_code == 2 and "--token or --token-file" in r.output

    r = runner.invoke(app, ["sites", "drain", "hpc", "--url", lcp.url, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["health"] == "Draining"
    assert lcp.get("/v1/sites/hpc")["health"] == "Draining"
    r = runner.invoke(app, ["sites", "resume", "hpc", "--url", lcp.url, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["health"] == "Ready"
    r = runner.invoke(app, ["sites", "remove", "hpc2", "--url", lcp.url, "--leave-running"])
    assert r.exit_code == 0 and "site hpc2 removed" in r.output
    assert [s["name"] for s in lcp.get("/v1/sites")["items"]] == ["hpc"]
    r = runner.invoke(app, ["sites", "remove", "nope", "--url", lcp.url])
    assert r.exit_code == 1 and "not registered" in r.output
