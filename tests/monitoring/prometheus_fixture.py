"""A real Prometheus and node-exporter for the tests, run by ``deploy/dev/prometheus.sh``.

* ``prometheus`` (session): Prometheus on a free loopback port scraping a node-exporter
  every second, with the shipped rules loaded, and a blackbox exporter whose TCP probe
  targets are set with ``.target("blackbox", host_port)``; ``.url``, ``.exporter_instance``,
  ``.query(promql, at=None)``, ``.target(job, *host_ports)``, ``.stop_exporter()``,
  ``.start_exporter()``, ``.stop()``.
* :func:`start_prometheus` starts a private pair (for tests that stop it).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_SH = REPO / "deploy" / "dev" / "prometheus.sh"


@dataclass
class Prometheus:
    """Prometheus on 127.0.0.1:``port`` scraping node-exporter on ``exporter_port``."""

    dir: Path
    port: int
    exporter_port: int
    blackbox_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def exporter_instance(self) -> str:
        """The ``instance`` label of the node-exporter's series."""
        return f"127.0.0.1:{self.exporter_port}"

    def _sh(self, *args: str) -> None:
        r = subprocess.run([str(PROMETHEUS_SH), *args], capture_output=True, text=True,
                           timeout=90)
        if r.returncode != 0:
            raise RuntimeError(f"{PROMETHEUS_SH.name} {' '.join(args)} failed: "
                               f"{r.stderr.strip() or r.stdout.strip()}")

    def start(self) -> None:
        extra = [str(self.blackbox_port)] if self.blackbox_port else []
        self._sh("start", str(self.dir), str(self.port), str(self.exporter_port), "1s", *extra)

    def stop(self) -> None:
        self._sh("stop", str(self.dir))

    def pause(self) -> None:
        """SIGSTOP Prometheus: connections are accepted, nothing is answered."""
        self._sh("pause", str(self.dir))

    def resume(self) -> None:
        self._sh("resume", str(self.dir))

    def stop_exporter(self) -> None:
        self._sh("stop-exporter", str(self.dir))

    def start_exporter(self) -> None:
        self._sh("start-exporter", str(self.dir))

    def target(self, job: str, *host_ports: str) -> None:
        """Scrape ``host_ports`` as job ``job`` (file_sd; picked up within seconds)."""
        self._sh("target", str(self.dir), job, *host_ports)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's ``result`` (at ``at``, Unix s, if given).

        Raises:
            AssertionError: Prometheus answered with an error.
        """
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        r = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=5)
        assert r.status_code == 200, f"{promql}: HTTP {r.status_code} {r.text}"
        return list(r.json()["data"]["result"])


def start_prometheus(dir: Path, blackbox: bool = False) -> Prometheus:
    """Start a private Prometheus + node-exporter (+ blackbox exporter) in ``dir``."""
    from tests.conftest import free_port

    prom = Prometheus(dir=dir, port=free_port(), exporter_port=free_port(),
                      blackbox_port=free_port() if blackbox else None)
    prom.start()
    return prom


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus + node-exporter for the session (fails with the script's reason)."""
    try:
        prom = start_prometheus(tmp_path_factory.mktemp("prometheus"), blackbox=True)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield prom
    prom.stop()
