"""One ``continuum server`` subprocess for the control-plane benches, and what they read
from it: its ``/metrics`` (Prometheus text), its process (CPU, RSS) and its SQLite file.

The live-work and fleet benches (``live.py``, ``fleet.py``) start the server through
:class:`Server`; ``submit.py`` keeps its own replicas (it is the submission path's bench).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.control_plane.submit import free_port

REPO = Path(__file__).resolve().parents[2]
Labels = tuple[tuple[str, str], ...]
"""A sample's labels, sorted by name."""


class Server:
    """``continuum server`` on 127.0.0.1 with ``federation`` (a Federation document as a
    dict), its state (and SQLite database) in ``work/state``, its log in
    ``work/server.log``; ``env`` adds ``CONTINUUM_*`` settings.

    Raises:
        RuntimeError: the server did not answer ``/healthz`` within ``start_timeout`` s.
    """

    def __init__(self, work: Path, federation: dict[str, Any],
                 env: dict[str, str] | None = None, start_timeout: float = 120.0) -> None:
        self.work = work
        self.state_dir = work / "state"
        fed = work / "federation.yaml"
        fed.write_text(yaml.safe_dump(federation))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "server.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "server", "--port", str(self.port),
                 "--state-dir", str(self.state_dir), "--federation", str(fed)],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                stdout=log, stderr=subprocess.STDOUT)
        self.process = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + start_timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"control plane did not start; see {self.log}")
            time.sleep(0.2)
        token = (self.state_dir / "admin.token").read_text().strip()
        self.headers = {"Authorization": f"Bearer {token}"}

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def metrics(self, client: httpx.Client | None = None) -> dict[str, dict[Labels, float]]:
        """``/metrics`` parsed: sample name → {sorted label pairs → value}."""
        get = client.get if client is not None else httpx.get
        text = get(f"{self.url}/metrics", timeout=30).text
        out: dict[str, dict[Labels, float]] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    def rss_bytes(self) -> int:
        """Resident set size of the server process now (bytes)."""
        return int(self.process.memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used so far."""
        t = self.process.cpu_times()
        return float(t.user + t.system)

    def database_bytes(self) -> int:
        """Size of the SQLite database with its WAL and shared-memory files (bytes)."""
        return sum(p.stat().st_size for p in self.state_dir.glob("continuum.db*"))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def sim_federation(nodes: int, sites: int, time_scale: float = 1000.0) -> dict[str, Any]:
    """A Federation of ``sites`` sim sites holding ``nodes`` nodes between them (32 CPUs,
    128 GiB each), all in one location; ``time_scale`` virtual seconds per wall second."""
    per = [nodes // sites + (1 if i < nodes % sites else 0) for i in range(sites)]
    return {
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "bench"},
        "spec": {"controlPlane": {"location": "dc"},
                 "locations": [{"name": "dc", "lat": 50.1, "lon": 8.7}],
                 "sites": [{"name": f"sim-{i}", "kind": "sim", "tier": "cloud", "location": "dc",
                            "config": {"timeScale": time_scale, "nodes": [
                                {"name": "vm", "count": n, "cpu": 32, "memory": "128Gi",
                                 "power": {"idleWatts": 50, "maxWatts": 200,
                                           "source": "bench figure"}}]}}
                           for i, n in enumerate(per)]}}
