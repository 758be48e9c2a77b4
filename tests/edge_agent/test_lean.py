"""A lean agent (issue 16 item 3): the base install (``pip install .``, no extras) carries
the agent and nothing of the server.

Aspects: a real agent, started as ``python -m edge_agent.cli run`` against a real
Mosquitto and left idle after its first telemetry, never imports a server package, nor
httpx (which only fetching or uploading an artifact and ``enroll`` load), nor
cryptography (which only a PEM command key loads) or PyNaCl (which the first signed
command loads), nor what only the base install's
client CLI ``continuum`` and the server use (typer, rich, PyYAML, pydantic: the wire
protocol's models and the agent's configuration are msgspec Structs); every third-party distribution the
agent's modules import, at start or later, is a base dependency of pyproject.toml or one
of theirs, and no server package is a base dependency. An agent that ran a signed
command has loaded PyNaCl and still not cryptography. The idle agent's RSS is measured
in bench/RESULTS.md (``bench/agent_rss.sh``), not asserted here.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edge_agent.protocol import topic
from tests.conftest import AgentFactory
from tests.helpers import Observer, wait_for

REPO = Path(__file__).resolve().parents[2]

SERVER_ONLY = frozenset({
    "fastapi", "starlette", "uvicorn", "httptools", "uvloop", "orjson", "sqlalchemy",
    "alembic", "psycopg", "amqtt", "pwdlib", "numpy", "scipy", "sklearn", "prometheus_client",
    "prometheus_api_client", "pydantic_settings", "kubernetes", "jwt", "limits", "matplotlib",
    # the control plane's own packages
    "control_plane", "adapters", "placement", "monitoring",
})
"""Top-level modules an agent must not load (what the ``server`` extra and the server's
packages provide)."""

LAZY = frozenset({"httpx", "nacl", "cryptography"})
"""Base dependencies an idle agent does not load: httpx (artifact transfer and enrolment
only), PyNaCl (verifying a signed command) and cryptography (reading a PEM command key)."""
CLIENT_ONLY = frozenset({"typer", "click", "rich", "yaml", "pydantic", "pydantic_core"})
"""Top-level modules of base dependencies the agent never loads: the client CLI
(``continuum``, control_plane/cli.py) is typer and rich, reads YAML and validates with
pydantic; the agent's own command line is argparse and its models are msgspec Structs."""


def imported_roots(log: str) -> set[str]:
    """Top-level module names of every ``-X importtime`` line in ``log``."""
    names = {line.rsplit("|", 1)[1].strip() for line in log.splitlines()
             if line.startswith("import time:") and "|" in line}
    return {n.split(".")[0] for n in names} - {"imported package"}  # the header line


def test_an_idle_agent_loads_no_server_package(agents: AgentFactory, observer: Observer) -> None:
    a = agents.spawn(None, env={"PYTHONPROFILEIMPORTTIME": "1"})
    wait_for(lambda: observer.latest(topic(a.device_id, "telemetry")), 15,
             message=lambda: f"first telemetry; log:\n{a.logs()[-3000:]}")
    assert a.terminate() == 0, a.logs()[-3000:]
    roots = imported_roots(a.logs())
    assert {"edge_agent", "paho", "msgspec", "psutil"} <= roots, sorted(roots)  # it parsed
    assert not roots & SERVER_ONLY, sorted(roots & SERVER_ONLY)
    assert not roots & LAZY, sorted(roots & LAZY)
    assert not roots & CLIENT_ONLY, sorted(roots & CLIENT_ONLY)


def test_an_agent_that_ran_a_signed_command_verified_it_without_cryptography(
        agents: AgentFactory, observer: Observer) -> None:
    a = agents.spawn(None, env={"PYTHONPROFILEIMPORTTIME": "1"})
    wait_for(lambda: observer.latest(topic(a.device_id, "telemetry")), 15,
             message=lambda: f"first telemetry; log:\n{a.logs()[-3000:]}")
    assert observer.wait_run(a.device_id, observer.run(a.device_id, argv=["true"])).state \
        == "Succeeded", a.logs()[-3000:]
    assert a.terminate() == 0, a.logs()[-3000:]
    roots = imported_roots(a.logs())
    assert "nacl" in roots, sorted(roots)
    assert not roots & ({"cryptography", "httpx"} | SERVER_ONLY | CLIENT_ONLY), sorted(roots)


def _base_closure() -> set[str]:
    """Canonical names of the base dependencies and everything they require (as
    installed here), extras and non-matching markers left out."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in md.requires(req.name) or []]
    return seen


def test_the_base_install_carries_what_the_agent_imports() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    server = {canonicalize_name(Requirement(r).name)
              for r in project["optional-dependencies"]["server"]}
    assert base & server == {"cryptography"}  # the agent verifies signed commands with it
    assert not {"fastapi", "sqlalchemy", "numpy", "scipy", "scikit-learn", "uvicorn",
                "pydantic-settings", "kubernetes", "orjson"} & base
    code = ("import json, sys\n"
            "bare = set(sys.modules)\n"  # what the interpreter and site loaded
            "import edge_agent.cli, edge_agent.agent, edge_agent.enrollment\n"
            "print(json.dumps(sorted(set(sys.modules) - bare)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    loaded = set(json.loads(out))
    roots = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names)
    assert not roots & SERVER_ONLY, sorted(roots & SERVER_ONLY)
    assert not roots & CLIENT_ONLY, sorted(roots & CLIENT_ONLY)
    # the server's models stay out (pydantic's, every schema built: ~30 ms of start-up);
    # the one type the agent shares with them, Tier, comes from continuum.tier
    assert not {"continuum.model", "continuum.base"} & loaded and "continuum.tier" in loaded
    owners = md.packages_distributions()
    # and what it loads later (LAZY; not imported here: httpx would also load the click
    # and rich of its optional CLI where the environment has them)
    dists = {canonicalize_name(d) for r in roots | LAZY for d in owners.get(r, [])} - {"continuum"}
    assert {"msgspec", "paho-mqtt", "psutil", "pynacl", "cryptography"} <= dists, dists
    closure = _base_closure()
    assert dists <= closure, f"imported by the agent, not in the base install: {dists - closure}"
