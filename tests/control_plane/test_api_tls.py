"""The API over TLS (issue 12 item 9): ``continuum server --tls-cert --tls-key`` serves
HTTPS; the CLI's client and an agent's artifact transfers verify it against the CA they
are given, and refuse it without."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control_plane.client import Client, ConnectionFailed
from control_plane.pki import PkiFiles, init_pki
from edge_agent.runtime import RunFailure, Runtime
from tests.conftest import REPO, free_port
from tests.helpers import admin_token, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return init_pki(tmp_path_factory.mktemp("pki"), ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def https_server(pki: PkiFiles,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``continuum server`` with the PKI's server certificate; yields its https URL and
    its state directory."""
    state = tmp_path_factory.mktemp("tls") / "state"
    port = free_port()
    log = state.parent / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", "server", "--port", str(port),
             "--state-dir", str(state), "--tls-cert", str(pki.server_cert),
             "--tls-key", str(pki.server_key)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "CONTINUUM_TOKEN"})
    url = f"https://127.0.0.1:{port}"

    ca = ssl.create_default_context(cafile=str(pki.ca_cert))

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", verify=ca, timeout=2).is_success
        except httpx.HTTPError:
            return False
    try:
        wait_for(up, timeout=60, message=lambda: f"https server up; log:\n{log.read_text()}")
        assert f"listening on https://127.0.0.1:{port}" in log.read_text()
        yield url, state
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # its stop is not what these tests check
            proc.kill()
            proc.wait()


def test_the_client_verifies_the_api_against_the_ca(https_server: tuple[str, Path],
                                                     pki: PkiFiles) -> None:
    url, state = https_server
    token = admin_token(state)
    c = Client(url, token=token, ca=str(pki.ca_cert))
    assert c.workflows()["items"] == []
    with pytest.raises(ConnectionFailed):  # the system's CAs do not know this one
        Client(url, token=token).workflows()
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
        httpx.get(url.replace("https", "http") + "/healthz", timeout=5)


def test_an_agents_artifact_transfer_verifies_the_api(https_server: tuple[str, Path],
                                                       pki: PkiFiles, tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"x")
    url = f"{https_server[0]}/v1/artifacts/wf-nope/out?run=run-nope&cap=forged"
    # with the CA: the TLS session is up and the API itself refuses the forged capability
    with pytest.raises(RunFailure, match=r"was refused: HTTP 4\d\d"):
        Runtime(tmp_path / "a", server_ca=pki.ca_cert).upload(url, out, "out")
    # without it: the certificate is refused, retried until the run is cancelled
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    with pytest.raises(RunFailure, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
        Runtime(tmp_path / "b").upload(url, out, "out", cancel)


def test_a_certificate_without_its_key_is_refused_in_one_line(pki: PkiFiles,
                                                              tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "control_plane.cli", "server", "--port",
                        str(free_port()), "--state-dir", str(tmp_path / "s"), "--tls-cert",
                        str(pki.server_cert)], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert "tls_cert_file and tls_key_file go together" in r.stderr
    assert "Traceback" not in r.stderr
