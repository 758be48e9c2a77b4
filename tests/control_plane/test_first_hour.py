"""The first hour of a new user (issue 11): what a newcomer meets before any real work.

Aspects: CLI tables piped at 80 columns keep every ID whole; ``-o wide|json|yaml``; the
API port taken (``continuum server`` says so and starts nothing; the demo fails at once
on an explicit port and never talks to the foreign server, or takes a free port by
default); SIGTERM (or SIGKILL) on the demo leaves no process behind; log volume (an
agent's RTT probe to the embedded broker logs nothing at WARNING+, an idle server with
two Slurm sites logs no httpx/httpcore INFO line per poll); a base install (no server
extra) gets an install hint instead of a traceback; every API route is in docs/api.md;
``continuum-agent run --help`` shows its environment variables whole at 80 columns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from fastapi.routing import APIRoute
from rich.console import Console
from typer.testing import CliRunner

from control_plane import cli, demo
from control_plane.broker import EmbeddedBroker
from control_plane.client import ApiError, Client
from edge_agent.telemetry import tcp_rtt_ms
from tests.adapters.slurm.conftest import LiveFactory, SlurmCluster, live_cp  # noqa: F401
from tests.conftest import REPO, Mosquitto, free_port
from tests.control_plane.harness import control_plane, served, workflow
from tests.helpers import admin_token, wait_for

runner = CliRunner()
PY = sys.executable


def run_cli(*args: str, columns: int | None = 80, timeout: float = 60,
            script: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m control_plane.cli ARGS`` (or ``python -c SCRIPT ARGS``) with stdout a
    pipe (no terminal) and ``COLUMNS=columns``."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    argv0 = ["-c", script] if script else ["-m", "control_plane.cli"]
    return subprocess.run([PY, *argv0, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A foreign server: a socket listening on a loopback port, never accepting."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def connections_to(s: socket.socket) -> int:
    """How many connections reached the listener ``s`` (accepting them now)."""
    s.setblocking(False)
    n = 0
    while True:
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


# ---------------------------------------------------------------- tables


def test_piped_tables_at_80_columns_keep_every_id(tmp_path: Path) -> None:
    with served(tmp_path / "state") as url:
        c = Client(url)
        for i in range(2):
            c.wait(c.submit(workflow(f"flow-{i}"))["id"])
        runs = c.runs()["items"]
        wfs = c.workflows()["items"]
        nodes = c.nodes()["items"]
        for what, ids in (("runs", [r["id"] for r in runs] + [r["node"] for r in runs]),
                          ("workflows", [w["id"] for w in wfs]),
                          ("nodes", [n["id"] for n in nodes])):
            r = run_cli("get", what, "--url", url)
            assert r.returncode == 0, r.stderr
            for id_ in ids:
                assert id_ in r.stdout, f"{id_} cut in:\n{r.stdout}"
            assert "…" not in r.stdout, r.stdout
            assert max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout
        # the Nodes headers are words, not "C…"
        nodes_out = run_cli("get", "nodes", "--url", url).stdout
        assert "CPU" in nodes_out and "MEMORY" in nodes_out and "READY" in nodes_out
        # -o wide adds columns; with no COLUMNS a pipe gets a wide default, nothing cut
        wide = run_cli("get", "runs", "--url", url, "-o", "wide", columns=None)
        assert "WORKFLOW" in wide.stdout and "ATTEMPT" in wide.stdout and "…" not in wide.stdout
        assert "WORKFLOW" not in run_cli("get", "runs", "--url", url).stdout
        # wider than 80 columns: every column and ID still there (the terminal wraps)
        wide80 = run_cli("get", "runs", "--url", url, "-o", "wide").stdout
        assert all(h in wide80 for h in ("TASK", "REASON", "ATTEMPT")), wide80
        assert all(r["id"] in wide80 and r["workflowId"] in wide80 for r in runs), wide80
        assert all(w["id"] in wide.stdout for w in wfs)
        out = runner.invoke(cli.app, ["get", "runs", "--url", url, "-o", "yaml"]).output
        assert yaml.safe_load(out) == json.loads(
            runner.invoke(cli.app, ["get", "runs", "--url", url, "-o", "json"]).output)
    help_ = run_cli("get", "runs", "--help").stdout
    assert all(f in help_ for f in ("wide", "json", "yaml")), help_


# ---------------------------------------------------------------- the API port taken


def test_server_on_a_taken_port_says_so_and_starts_nothing(listener: socket.socket,
                                                           tmp_path: Path) -> None:
    port = listener.getsockname()[1]
    r = run_cli("server", "--port", str(port), "--state-dir", str(tmp_path / "state"),
                "--log-level", "info")
    assert r.returncode == 1, r.stderr
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in r.stderr
    assert "listening" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "state").exists()


def test_server_on_an_old_database_says_so_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "continuum.db") as conn:  # the runs table of an older build
        conn.execute("CREATE TABLE runs (id VARCHAR(32) PRIMARY KEY, state VARCHAR(16))")
    r = run_cli("server", "--port", str(free_port()), "--state-dir", str(state))
    assert r.returncode == 1, r.stderr
    assert "runs.replaces_run_id" in r.stderr and "new state directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_demo_on_a_taken_explicit_port_fails_at_once_and_never_talks_to_it(
        listener: socket.socket, tmp_path: Path) -> None:
    port = listener.getsockname()[1]
    r = run_cli("demo", "--port", str(port), "--state-dir", str(tmp_path / "demo"),
                "--broker", f"mqtt://127.0.0.1:{free_port()}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in r.stdout, r.stdout
    assert "--port 0" in r.stdout and "submitted" not in r.stdout
    # one line, however long (rich would wrap it at 80 columns, splitting "--port 0"
    # when the command line holding the port is long)
    assert len(r.stdout.strip().splitlines()) == 1, r.stdout
    assert connections_to(listener) == 0


def test_demo_takes_a_free_port_when_its_default_is_taken(
        listener: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = listener.getsockname()[1]
    monkeypatch.setattr(demo, "DEFAULT_PORT", taken)  # 8080 may be free or not on this host
    console = Console(record=True, width=200)
    d = demo.Demo(console=console, state_dir=tmp_path)
    d._bind()
    try:
        assert d.port not in (taken, 0)
        assert f"port {taken} is already in use" in console.export_text()
        with socket.socket() as probe:  # the demo's API socket holds its port
            with pytest.raises(OSError):
                probe.bind(("127.0.0.1", d.port))
    finally:
        d.stop()
    assert connections_to(listener) == 0


# ---------------------------------------------------------------- no process left behind


def _agents_of(proc: psutil.Process) -> list[psutil.Process]:
    return [p for p in proc.children(recursive=True)
            if any("edge_agent.cli" in a for a in p.cmdline())]


@pytest.mark.mosquitto
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_demo_killed_leaves_no_process(sig: signal.Signals, mosquitto: Mosquitto,
                                       tmp_path: Path) -> None:
    out = (tmp_path / "demo.out").open("w")
    children: list[psutil.Process] = []
    proc = subprocess.Popen(
        [PY, "-m", "control_plane.cli", "demo", "--keep", "--broker", mosquitto.url,
         "--port", "0", "--state-dir", str(tmp_path / "demo"), "--timeout", "120"],
        cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        ps = psutil.Process(proc.pid)
        # both agents started and online: the demo prints the Sites table after that
        wait_for(lambda: "Sites" in (tmp_path / "demo.out").read_text(), timeout=90,
                 message=lambda: (tmp_path / "demo.out").read_text()[-2000:])
        children = ps.children(recursive=True)
        assert len(_agents_of(ps)) == 2, children
        # it prints how to use its admin token, which works (and the API wants one)
        text = (tmp_path / "demo.out").read_text()
        assert f"export CONTINUUM_TOKEN=$(cat {tmp_path / 'demo' / 'admin.token'})" in text
        url = re.search(r"control plane\s+(http://\S+)", text).group(1)  # type: ignore[union-attr]
        assert Client(url, token=admin_token(tmp_path / "demo")).sites()["items"]
        with pytest.raises(ApiError) as e:
            Client(url, token="not-a-token").sites()
        assert e.value.status == 401
        proc.send_signal(sig)
        code = proc.wait(30)
        assert code == (128 + sig if sig == signal.SIGTERM else -sig)

        def all_gone() -> bool:
            return not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                           for c in children)
        # an agent stopping joins each active run for up to kill_grace + 5 s (a run caught
        # mid-transfer to the dead control plane takes that long): two runs, 10 s each
        wait_for(all_gone, timeout=45, message=lambda: "still running: " + "; ".join(
            f"{c.pid} {' '.join(c.cmdline())[:100]}" for c in children
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE))
    finally:
        for p in [psutil.Process(proc.pid), *children] if proc.poll() is None else children:
            try:  # a failed check must not leave its processes behind
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()
        out.close()
    if sig == signal.SIGTERM:
        assert "SIGTERM: stopping" in (tmp_path / "demo.out").read_text()


# ---------------------------------------------------------------- log volume


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """The CLI's logging set-up at info (library loggers' levels restored afterwards)."""
    saved = {n: logging.getLogger(n).level for n in cli.LIBRARY_LOGGERS}
    cli._setup_logging("info")
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)


def test_rtt_probes_to_the_embedded_broker_log_nothing_at_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="control_plane.broker")  # to see the demoted lines
    broker = EmbeddedBroker()
    broker.start()
    try:
        for _ in range(5):  # what each agent does with every telemetry message
            assert tcp_rtt_ms(broker.host, broker.port) is not None

        def probe_records() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name.startswith("amqtt")
                    and "No data" in r.getMessage()]
        wait_for(lambda: len(probe_records()) >= 10, timeout=10,
                 message=lambda: f"amqtt's records of 5 probes: {caplog.records}")
        assert {r.levelno for r in probe_records()} == {logging.DEBUG}
        loud = [r for r in caplog.records if r.name.startswith("amqtt")
                and r.levelno >= logging.WARNING]
        assert loud == []
    finally:
        broker.stop()


@pytest.mark.slurm
def test_idle_server_with_two_slurm_sites_logs_no_library_info(
        slurm: SlurmCluster, live_cp: LiveFactory,  # noqa: F811
        cli_logging: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    lcp = live_cp()
    for name in ("hpc-a", "hpc-b"):
        r = lcp.register(name, slurm.config())
        assert r.status_code == 201, r.text
    sites = [rt for rt in lcp.cp.federation.sites() if rt.spec.name in ("hpc-a", "hpc-b")]
    polls: dict[str, set[float]] = {rt.spec.name: set() for rt in sites}

    def polled_enough() -> bool:  # 20 inventory polls of each site (each is HTTP requests)
        for rt in sites:
            polls[rt.spec.name].add(rt.inventory_at)
        return all(len(p) >= 20 for p in polls.values())
    wait_for(polled_enough, timeout=60, interval=0.02,
             message=lambda: f"20 inventory polls per site: {polls}")
    chatter = [r.getMessage() for r in caplog.records
               if r.name.split(".")[0] in ("httpx", "httpcore") and r.levelno < logging.WARNING]
    assert chatter == [], chatter[:5]
    assert all(r.levelno >= logging.WARNING for r in caplog.records
               if r.name.split(".")[0] in cli.LIBRARY_LOGGERS)


# ---------------------------------------------------------------- the base install


BLOCK_SERVER_EXTRA = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["continuum", *sys.argv[1:]]
runpy.run_module("control_plane.cli", run_name="__main__")
"""


@pytest.mark.parametrize("args", [["server", "--port", "0"], ["demo", "--port", "0"]])
def test_server_commands_from_the_base_install_say_install_the_extra(
        args: list[str], tmp_path: Path) -> None:
    script = BLOCK_SERVER_EXTRA.format(blocked=set(cli.SERVER_EXTRA_MODULES))
    r = run_cli(*args, "--state-dir", str(tmp_path / "s"), script=script)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "this command needs the server extra" in r.stderr
    assert "pip install 'continuum[server]'" in r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


def test_client_commands_work_from_the_base_install() -> None:
    script = BLOCK_SERVER_EXTRA.format(blocked=set(cli.SERVER_EXTRA_MODULES))
    r = run_cli("get", "runs", "--url", f"http://127.0.0.1:{free_port()}",
                script=script)
    assert r.returncode == 1 and "cannot reach the control plane" in r.stderr, r.stderr
    assert run_cli("--help", script=script).returncode == 0


# ---------------------------------------------------------------- docs against the code


def test_every_api_route_is_in_the_api_doc(tmp_path: Path) -> None:
    table = [(m, p) for m, p in re.findall(r"^\| (GET|POST|PUT|DELETE|PATCH) \| `([^`]+)`",
                                            (REPO / "docs" / "api.md").read_text(), re.M)]
    assert table
    with control_plane(tmp_path / "state") as (cp, _):
        routes = [(m, r) for r in cp.app.routes if isinstance(r, APIRoute)
                  and r.include_in_schema for m in sorted(r.methods)]
    # a documented path with its placeholders filled in must match the route
    missing = [f"{m} {r.path}" for m, r in routes
               if not any(dm == m and r.path_regex.fullmatch(re.sub(r"\{[^}]+\}", "x", dp))
                          for dm, dp in table)]
    assert missing == [], f"routes missing from docs/api.md's table: {missing}"


def test_agent_help_shows_every_env_var_whole_at_80_columns() -> None:
    env = {**os.environ, "COLUMNS": "80"}
    helps = []
    for command in ("run", "enroll"):
        r = subprocess.run([PY, "-m", "edge_agent.cli", command, "--help"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        helps.append(r.stdout)
    text = "\n".join(helps)
    names = re.findall(r"envvar=_env\(\"(\w+)\"\)", (REPO / "edge_agent" / "cli.py").read_text())
    assert len(names) >= 15
    for n in names:
        var = "CONTINUUM_AGENT_" + n.upper()
        assert re.search(rf"{var}\s*$", text, re.M), f"{var} not whole in:\n{text}"
