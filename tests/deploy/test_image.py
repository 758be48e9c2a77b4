"""The OCI image of deploy/image/build.sh (issue 15 item 4), run with podman: built from
this working tree without any registry (debootstrap + umoci; cached by a hash of what goes
in, so an unchanged tree reuses the image), loaded into a podman store kept under the
cache directory, and run: ``continuum --help``, then ``continuum server`` as the chart
runs it (read-only root filesystem, /tmp a tmpfs, the state directory a volume) answering
``/healthz`` and ``/readyz`` as user 10001.

Cost, measured on 2 cores: the first time on a machine ~4.5 min (the Debian root 72 s,
which ``make test-deps`` builds beforehand with ``build.sh --base``; pip 80 s and umoci
55-97 s; the first ``podman load`` into the store ~35 s); after a change to the Python
sources ~2.5-3 min (the whole file: 162 s); an unchanged tree reuses everything (the
build returns at once, the load takes < 1 s; the whole file: 11 s).

podman runs here with ``--runtime runc`` (crun 1.8.1 refuses this machine's hybrid
cgroup v1 hierarchy: "cgroups in hybrid mode not supported, drop all controllers from
cgroupv2"), ulimits below the machine's (podman's defaults and even the machine's own
values fail: "crun: setrlimit `RLIMIT_NPROC`: Operation not permitted", as root lacks
CAP_SYS_RESOURCE here) and the host network; docs/deploy.md says so too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.helpers import wait_for

BUILD_SH = REPO / "deploy" / "image" / "build.sh"
CACHE = Path(os.environ.get("CONTINUUM_CACHE", Path.home() / ".cache" / "continuum")) / "image"
STORE = CACHE / "podman"
"""The tests' podman store (images and containers), kept between runs."""
IMAGE = "localhost/continuum:0.1.0"
RUN = ["--runtime", "runc", "--network=host", "--ulimit", "nofile=4096:4096",
       "--ulimit", "nproc=4096:4096"]
"""What ``podman run`` needs on these machines (module docstring)."""

pytestmark = pytest.mark.timeout(1200)


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["podman", "--root", str(STORE / "root"), "--runroot", str(STORE / "run"),
                        "--storage-driver", "overlay", *args],
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"podman {' '.join(args)}: {r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """This tree's image, built (or taken from the cache) and loaded into the podman store."""
    if os.geteuid() != 0:
        pytest.fail("building the image needs root (debootstrap, chroot)")
    archive = tmp_path_factory.mktemp("image") / "continuum.tar"
    r = subprocess.run([str(BUILD_SH), str(archive)], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, f"build.sh failed:\n{r.stderr[-4000:]}"
    out = podman("load", "-i", str(archive), timeout=600).stdout
    assert f"Loaded image: {IMAGE}" in out, out
    podman("image", "prune", "-f")  # the previous build's image, untagged by this one
    return IMAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_image_config(image: str) -> None:
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/opt/continuum/bin/continuum"]
    assert config["Cmd"] == ["server"]
    assert config["WorkingDir"] == "/var/lib/continuum"
    assert "8080/tcp" in config["ExposedPorts"]
    assert "CONTINUUM_STATE_DIR=/var/lib/continuum" in config["Env"]


def test_continuum_help_runs_in_podman(image: str) -> None:
    r = podman("run", "--rm", *RUN, image, "--help")
    assert "server" in r.stdout and "Usage: continuum" in r.stdout
    r = podman("run", "--rm", *RUN, "--entrypoint", "id", image)
    assert r.stdout.split()[0] == "uid=10001(continuum)"
    # the dev extra is not installed
    r = podman("run", "--rm", *RUN, "--entrypoint", "/opt/continuum/bin/pip", image,
               "show", "pytest", check=False)
    assert r.returncode != 0


@pytest.fixture
def server(image: str, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """``continuum server`` in a container with a read-only root: (container, url, state)."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 10001, 10001)
    port = free_port()
    name = f"continuum-test-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, *RUN, "--read-only", "--tmpfs", "/tmp",
           "-v", f"{state}:/var/lib/continuum", image, "server", f"--port={port}")
    try:
        yield name, f"http://127.0.0.1:{port}", state
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)


def test_server_in_podman_answers_healthz_and_readyz(server: tuple[str, str, Path]) -> None:
    name, url, state = server

    def status(path: str) -> int | str:
        try:
            return httpx.get(url + path, timeout=2).status_code
        except httpx.HTTPError as e:
            return f"{e!r}; logs: {podman('logs', name, check=False).stderr[-2000:]}"
    wait_for(lambda: status("/healthz") == 200, 90, message=lambda: f"/healthz: {status('/healthz')}")
    wait_for(lambda: status("/readyz") == 200, 60, message=lambda: f"/readyz: {status('/readyz')}")
    assert httpx.get(url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert "continuum_" in httpx.get(url + "/metrics", timeout=5).text

    # it runs as 10001, writes only its state directory (the volume), not the image
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    r = podman("exec", name, "touch", "/opt/continuum/x", check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    db = state / "continuum.db"
    assert db.exists() and db.stat().st_uid == 10001
    assert (state / "admin.token").stat().st_mode & 0o777 == 0o600

    # SIGTERM (podman stop) ends it cleanly
    podman("stop", "-t", "20", name, timeout=60)
    (info,) = json.loads(podman("inspect", name).stdout)
    assert info["State"]["ExitCode"] == 0, podman("logs", name, check=False).stderr[-2000:]
