"""The artifact wrapper of a Kubernetes pod, run here as its container would run it.

kwok (the real-cluster tests) and the API-server stand-in run no containers, so the
shell the adapter puts around a task with inputs or outputs is executed here, with the
``PATH`` of an image: with ``curl``; without it but with ``python3`` (the default image,
``python:3.12-slim``, has no curl and no wget); with neither (a clear exit 127). Inputs are
fetched from a real HTTP server and sha256-checked, outputs uploaded on success only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.base import ArtifactIn, ArtifactOut, TaskRun
from adapters.kubernetes import manifests as mf
from continuum.model import Task
from tests.helpers import ArtifactServer

DATA = b"reading 42\n" * 100
TOOLS = ("sh", "mkdir", "dirname", "sha256sum", "tr", "cat")
"""What an image's shell and coreutils offer (python:3.12-slim has them all)."""


def image_path(tmp: Path, *, curl: bool, python: bool) -> str:
    """A ``PATH`` of one directory holding the :data:`TOOLS`, and curl/python3 if asked."""
    bin_dir = tmp / f"bin-{int(curl)}{int(python)}"
    bin_dir.mkdir()
    tools = {t: shutil.which(t) for t in TOOLS}
    if curl:
        tools["curl"] = shutil.which("curl")
    if python:
        tools["python3"] = sys.executable
    for name, target in tools.items():
        assert target, f"{name} is not installed here"
        (bin_dir / name).symlink_to(target)
    return str(bin_dir)


def run_container(run: TaskRun, workdir: Path, path: str) -> subprocess.CompletedProcess[str]:
    c = mf.container(run, mf.PodOptions(default_image="python:3.12-slim"))
    assert c["image"] == "python:3.12-slim" and c["workingDir"] == mf.WORK_DIR
    workdir.mkdir()
    return subprocess.run([*c["command"], *c["args"]], cwd=workdir, capture_output=True,
                          text=True, timeout=60, env={"PATH": path, "HOME": str(workdir)})


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    s = ArtifactServer().start()
    s.files["/in/data"] = DATA
    yield s
    s.stop()


def upper_run(server: ArtifactServer, sha256: str | None = None) -> TaskRun:
    task = Task.model_validate({"name": "upper", "command": [
        "sh", "-c", "tr a-z A-Z < in/data.txt > out.txt"]})
    return TaskRun(run_id="run-wrap", workflow_id="wf-wrap", workflow_name="wrap", task=task,
                   inputs=[ArtifactIn(name="data", path="in/data.txt",
                                      url=server.url("in/data?run=run-wrap&cap=secret"),
                                      sha256=sha256 or hashlib.sha256(DATA).hexdigest(),
                                      size=len(DATA))],
                   outputs=[ArtifactOut(name="upper", path="out.txt",
                                        url=server.url("upload/upper?cap=secret"))])


@pytest.mark.parametrize("curl", [True, False], ids=["curl", "python3-only"])
def test_inputs_fetched_checked_and_outputs_uploaded(server: ArtifactServer, tmp_path: Path,
                                                     curl: bool) -> None:
    done = run_container(upper_run(server), tmp_path / "work",
                         image_path(tmp_path, curl=curl, python=True))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["in/data.txt: OK"]
    assert server.gets == {"/in/data": 1}
    assert server.uploads == {"/upload/upper": DATA.upper()}


def test_without_curl_a_wrong_checksum_stops_before_the_command(server: ArtifactServer,
                                                                tmp_path: Path) -> None:
    done = run_container(upper_run(server, sha256="0" * 64), tmp_path / "work",
                         image_path(tmp_path, curl=False, python=True))
    assert done.returncode != 0
    assert "in/data.txt: FAILED" in done.stdout
    assert not (tmp_path / "work" / "out.txt").exists() and server.uploads == {}


def test_without_curl_a_refused_download_names_the_file_not_the_capability(
        server: ArtifactServer, tmp_path: Path) -> None:
    del server.files["/in/data"]  # 404: not retried
    done = run_container(upper_run(server), tmp_path / "work",
                         image_path(tmp_path, curl=False, python=True))
    assert done.returncode == 1
    assert done.stderr.strip() == "continuum-artifacts: get in/data.txt: HTTP Error 404: Not Found"
    assert server.gets == {"/in/data": 1} and server.uploads == {}


def test_an_image_with_neither_curl_nor_python3_says_so(server: ArtifactServer,
                                                        tmp_path: Path) -> None:
    done = run_container(upper_run(server), tmp_path / "work",
                         image_path(tmp_path, curl=False, python=False))
    assert done.returncode == 127
    assert "neither curl nor python3" in done.stderr
    assert server.gets == {}


def test_a_failed_command_uploads_nothing(server: ArtifactServer, tmp_path: Path) -> None:
    run = upper_run(server)
    run.task = run.task.model_copy(update={"command": ["sh", "-c", "exit 3"]})
    done = run_container(run, tmp_path / "work", image_path(tmp_path, curl=False, python=True))
    assert done.returncode == 3 and server.uploads == {}
    assert os.listdir(tmp_path / "work" / "in") == ["data.txt"]
