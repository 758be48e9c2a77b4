"""deploy/dev/slurm.sh on its own, for each Slurm release (issue 13 item 2): the node is
idle, a batch job submitted with ``sbatch`` where the daemons run (in the release's root
for 24.11 and 26.05) completes, slurmrestd answers ``ping`` with a JWT on every API
version it says it serves; with ``--accounting``, ``sacct`` and slurmrestd's
``/slurmdb/<version>/jobs`` list the finished job; ``stop`` after a crash still removes
the bind mount of the cluster's directory; with ``--pivot-root`` nothing is mounted on
this host, a job (as the job user) may create a user namespace, and a crash leaves
nothing behind. None of this goes through the Slurm adapter.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adapters.slurm.conftest import SlurmCluster
from tests.conftest import SLURM_RELEASES, SlurmBeds
from tests.helpers import wait_for

pytestmark = pytest.mark.slurm


def rest(cluster: SlurmCluster, path: str) -> httpx.Response:
    return httpx.get(f"{cluster.url}{path}", timeout=15, headers={
        "X-SLURM-USER-NAME": cluster.user, "X-SLURM-USER-TOKEN": cluster.token(120)})


def sbatch(cluster: SlurmCluster, script: str) -> tuple[str, Path]:
    """Submit ``script`` (``--wrap``) with ``sbatch`` in the cluster's root; (job id, output)."""
    out = Path(cluster.workdir) / f"bed-{uuid.uuid4().hex[:8]}.out"
    r = cluster.run("sbatch", "--parsable", "--chdir", cluster.workdir, "-o", str(out),
                    "--wrap", script)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0], out


def mounts() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def kill_daemons(cluster: SlurmCluster) -> None:
    """SIGKILL every daemon of ``cluster`` (by its pid files), as a crash would."""
    for pidfile in (cluster.dir / "run").glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def test_the_bed_runs_a_batch_job_and_slurmrestd_answers(slurm: SlurmCluster) -> None:
    release = slurm.dir.name.split("-")[2]  # continuum-slurm-<release>-…
    assert release in SLURM_RELEASES
    assert slurm.release.startswith(release + "."), slurm.env
    assert bool(slurm.env["SLURM_ROOT"]) == (release != "22.05"), slurm.env
    state = slurm.run("sinfo", "-h", "-n", "localhost", "-o", "%t")
    assert state.stdout.split() == ["idle"], state

    job, out = sbatch(slurm, "echo hello from job $SLURM_JOB_ID on Slurm $SLURM_JOB_PARTITION")
    wait_for(lambda: out.exists() and "hello" in out.read_text(), timeout=30,
             message=lambda: f"job {job} writing {out}: {slurm.run('squeue').stdout}")
    assert out.read_text().strip() == f"hello from job {job} on Slurm debug"
    def completed() -> str:
        shown = slurm.run("scontrol", "show", "job", job).stdout
        return shown if "JobState=COMPLETED" in shown else ""
    assert "ExitCode=0:0" in wait_for(completed, timeout=30,
                                      message=f"job {job} COMPLETED in scontrol show job")

    served = slurm.env["SLURM_DATA_PARSERS"].split(",")
    assert served[0] == slurm.api
    for version in served:
        r = rest(slurm, f"/slurm/{version}/ping")
        assert r.status_code == 200, (version, r.text)
        body: dict[str, Any] = r.json()
        ping = body["pings"][0]
        # v0.0.36-38: "ping": "UP"; v0.0.40+: "pinged": "UP" and/or "responding": true
        assert ping.get("responding") is True or ping.get("pinged", ping.get("ping")) == "UP", body
        if release != "22.05":  # data_parser answers say the release and the parser
            assert body["meta"]["slurm"]["release"] == slurm.release, body["meta"]
            assert body["meta"]["plugin"]["data_parser"] == f"data_parser/{version}"
    assert rest(slurm, f"/slurm/{slurm.api}/jobs").status_code == 200
    anonymous = httpx.get(f"{slurm.url}/slurm/{slurm.api}/ping", timeout=15)
    assert anonymous.status_code == 401, anonymous.text


def test_accounting_lists_the_finished_job(slurm_accounting: SlurmCluster) -> None:
    cluster = slurm_accounting
    assert cluster.env["SLURM_ACCOUNTING"] == "yes"
    job, out = sbatch(cluster, "echo accounted; exit 3")

    def in_sacct() -> str:
        r = cluster.run("sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State,ExitCode,Account")
        return r.stdout.strip() if "FAILED" in r.stdout else ""
    assert wait_for(in_sacct, timeout=60, message=f"job {job} FAILED in sacct") \
        == f"{job}|FAILED|3:0|continuum"

    def in_slurmdb() -> dict[str, Any] | None:
        r = rest(cluster, f"/slurmdb/{cluster.api}/jobs")
        assert r.status_code == 200, r.text
        return next((j for j in r.json()["jobs"] if str(j["job_id"]) == job
                     and "FAILED" in j["state"]["current"]), None)
    record = wait_for(in_slurmdb, timeout=60, message=f"job {job} FAILED in /slurmdb/jobs")
    assert record["exit_code"]["return_code"]["number"] == 3, record["exit_code"]
    assert record["account"] == "continuum" and record["user"] == "root", record


def test_stop_after_a_crash_unmounts_the_directory() -> None:
    """A 24.11 bed whose daemons were all killed (-9) is still cleaned up by ``stop``."""
    cluster = SlurmBeds().get("24.11")  # its own cluster, not the session's
    try:
        root = cluster.env["SLURM_ROOT"]
        assert f"{root}{cluster.dir}" in mounts()
        assert f"{root}/proc" in mounts()
        kill_daemons(cluster)  # a crash: nothing stopped them
    finally:
        cluster.stop()
    assert f"{root}{cluster.dir}" not in mounts()
    assert not Path(f"{root}{cluster.dir}").exists()
    others = [m for m in mounts() if m.startswith(root + "/")
              and m not in (f"{root}/proc", f"{root}/sys")]
    assert others or f"{root}/proc" not in mounts(), others  # proc/sys go with the last bed


def test_an_unknown_release_or_a_root_of_another_release_is_refused(tmp_path: Path) -> None:
    """``--release`` must be one of the three, and a root whose Slurm is not the release
    asked for (here: a cache whose ``24.11`` is the 26.05 root) stops ``start`` by name."""
    from tests.adapters.slurm.conftest import SLURM_SH

    r = subprocess.run([str(SLURM_SH), "start", str(tmp_path / "x"), "--release", "23.02"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "unknown Slurm release '23.02' (22.05, 24.11 or 26.05)" in r.stderr

    real = SlurmBeds().get("26.05")  # builds the 26.05 root if needed; its env names it
    real.stop()
    cache = Path(tempfile.mkdtemp(prefix="continuum-cache-"))
    (cache / "slurm-root").mkdir()
    (cache / "slurm-root" / "24.11").symlink_to(real.env["SLURM_ROOT"])
    d = Path(tempfile.mkdtemp(prefix="continuum-slurm-wrong-"))
    try:
        r = subprocess.run([str(SLURM_SH), "start", str(d), "--release", "24.11"],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "CONTINUUM_CACHE": str(cache)})
        assert r.returncode != 0
        assert f"slurmctld in {real.env['SLURM_ROOT']} is Slurm '{real.release}', not 24.11" \
            in r.stderr, r.stderr
    finally:
        subprocess.run([str(SLURM_SH), "stop", str(d)], capture_output=True, timeout=90)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    assert not [m for m in mounts() if m.endswith(str(d))]


def test_pivot_root_mounts_nothing_here_and_jobs_may_create_user_namespaces() -> None:
    """``--pivot-root`` (26.05): the daemons' mounts live in their own mount namespace
    (none on this host), a job of the job user can create a user namespace (what
    Apptainer needs, refused in a chroot), and after every daemon is killed (-9) ``stop``
    leaves no directory in the root; on 22.05 (no root) the option is refused by name."""
    from tests.adapters.slurm.conftest import SLURM_SH

    r = subprocess.run([str(SLURM_SH), "start", "/tmp/never-started", "--pivot-root"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "--pivot-root needs a release with a root filesystem (24.11 or 26.05), not 22.05" \
        in r.stderr
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="continuum-slurm-26.05-pivot-")))
    try:
        cluster.start("26.05", pivot_root=True)
        root = cluster.env["SLURM_ROOT"]
        assert cluster.env["SLURM_ENTER"] == "pivot_root"
        assert not [m for m in mounts() if str(cluster.dir) in m]  # (root/proc: maybe a
        # chroot bed of 26.05 of the same session)
        slurmd = (cluster.dir / "run" / "slurmd.daemon.pid").read_text().strip()
        theirs = [line.split()[4] for line in
                  Path(f"/proc/{slurmd}/mountinfo").read_text().splitlines()]
        assert str(cluster.dir) in theirs and "/proc" in theirs, theirs

        out = Path(cluster.workdir) / "userns.out"
        r = cluster.run("setpriv", f"--reuid={cluster.user}", f"--regid={cluster.user}",
                        "--init-groups", "sbatch", "--parsable", "--chdir", cluster.workdir,
                        "-o", str(out), "--wrap", "unshare --user --map-root-user id -u")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: out.exists() and out.read_text().strip(), timeout=30,
                 message=lambda: f"the user-namespace job writing {out}")
        assert out.read_text().strip() == "0", out.read_text()

        kill_daemons(cluster)  # a crash: nothing stopped them
    finally:
        cluster.stop()
    assert not [m for m in mounts() if str(cluster.dir) in m]
    assert not Path(f"{root}{cluster.dir}").exists()
