"""A task in an Apptainer image built locally (issue 13 item 6), on the Slurm 26.05 bed.

No registry is reachable: the image is a SIF that ``apptainer build`` makes, inside the
bed, from a tiny root filesystem (dash, cat and the C library copied from the Debian root,
plus ``/etc/continuum-image``, a file only the image has). The bed is started with
``slurm.sh --pivot-root``: in the default chroot, unprivileged Apptainer cannot create its
user namespace (the kernel refuses CLONE_NEWUSER to a chrooted process). Jobs run as the
bed's job user ``slurm`` (Apptainer as root needs capabilities this machine lacks).

* bed level, no adapter: the batch script :func:`adapters.slurm.script.batch_script` makes
  for a task with ``image: <sif>`` is submitted with ``sbatch`` inside the bed;
* through the control plane and the Slurm adapter (``config.apptainer: true``): the task's
  output tail is the image's file. This one needs the adapter's OpenAPI v0.0.40+ support
  (26.05 serves v0.0.42-v0.0.45 only).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.base import TaskRun
from adapters.slurm.script import EXIT_FILE, batch_script, paths
from continuum.model import Task
from tests.adapters.slurm.conftest import LiveFactory, SlurmCluster
from tests.helpers import wait_for

pytestmark = pytest.mark.slurm

RELEASE = "26.05"
MARKER = "continuum-image: built from a local root filesystem"
"""The content of ``/etc/continuum-image``, which exists in the image only."""

# the tiny root filesystem: dash as /bin/sh, cat, and what they link (libc, the loader)
BUILD = """set -e
t={tree}
rm -rf "$t"; mkdir -p "$t/bin" "$t/etc" "$t/tmp" "$t/lib/x86_64-linux-gnu" "$t/lib64"
cp /usr/bin/dash "$t/bin/sh"; cp /usr/bin/cat "$t/bin/cat"
cp /lib/x86_64-linux-gnu/libc.so.6 "$t/lib/x86_64-linux-gnu/"
cp /lib64/ld-linux-x86-64.so.2 "$t/lib64/"
printf '%s\\n' '{marker}' > "$t/etc/continuum-image"
apptainer build --force {sif} "$t"
chmod 644 {sif}
"""


class AppBed:
    """The 26.05 bed under pivot_root and the SIF built in it."""

    def __init__(self, cluster: SlurmCluster, sif: str) -> None:
        self.cluster = cluster
        self.sif = sif


@pytest.fixture(scope="module")
def app_bed() -> Iterator[AppBed]:
    """Slurm 26.05 started with ``--pivot-root`` and ``tiny.sif`` built in its work
    directory (once per session: only this module uses it)."""
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix=f"continuum-slurm-{RELEASE}-app-")))
    try:
        cluster.start(RELEASE, pivot_root=True)
        sif = f"{cluster.workdir}/tiny.sif"
        r = cluster.run("sh", "-c", BUILD.format(tree=f"{cluster.workdir}/tiny-root",
                                                 marker=MARKER, sif=sif), timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        yield AppBed(cluster, sif)
    finally:
        cluster.stop()


def test_the_image_is_built_from_a_local_root_filesystem(app_bed: AppBed) -> None:
    bed = app_bed.cluster
    assert bed.env["SLURM_ENTER"] == "pivot_root" and bed.release.startswith(RELEASE + ".")
    # the marker is in the image, not in the bed's root
    assert not Path(bed.env["SLURM_ROOT"], "etc/continuum-image").exists()
    r = bed.run("apptainer", "inspect", "--list-apps", app_bed.sif)  # a valid SIF
    assert r.returncode == 0, r.stderr
    assert bed.run("apptainer", "sif", "list", app_bed.sif).stdout.count("Squashfs") == 1


def test_the_batch_script_runs_the_task_in_the_image(app_bed: AppBed) -> None:
    """Bed level (no adapter): the adapter's batch script for ``image: <sif>``, via sbatch."""
    bed = app_bed.cluster
    task = Task.model_validate({"name": "in-image", "command": ["cat", "/etc/continuum-image"],
                                "image": app_bed.sif})
    run = TaskRun(run_id=f"run-{uuid.uuid4().hex[:8]}", workflow_id="wf-app",
                  workflow_name="app", task=task)
    jp = paths(bed.workdir, run.run_id)
    script = Path(bed.workdir) / f"{run.run_id}.sh"
    script.write_text(batch_script(run, jp, apptainer="apptainer"))
    assert f"apptainer exec {app_bed.sif} cat /etc/continuum-image" in script.read_text()
    r = bed.run("setpriv", f"--reuid={bed.user}", f"--regid={bed.user}", "--init-groups",
                "sbatch", "--parsable", "--chdir", bed.workdir, "-o", jp.output, str(script))
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    exit_file = Path(jp.run_dir) / EXIT_FILE
    wait_for(lambda: exit_file.exists() and exit_file.read_text().strip(), timeout=120,
             message=lambda: f"job {job} finishing: {bed.run('squeue').stdout}")
    out = Path(jp.output).read_text()
    assert exit_file.read_text().strip() == "0", out
    assert MARKER in out.splitlines(), out


def test_a_task_with_a_local_image_runs_through_the_adapter(app_bed: AppBed,
                                                             live_cp: LiveFactory) -> None:
    """Through the control plane: a site with ``apptainer: true``, a task with ``image``."""
    bed = app_bed.cluster
    lcp = live_cp()
    r = lcp.register("hpc", bed.config(apptainer=True))
    assert r.status_code == 201, r.text
    wid = lcp.submit([{"name": "in-image", "command": ["cat", "/etc/continuum-image"],
                       "image": app_bed.sif, "resources": {"cpu": 1, "memory": "64Mi"},
                       "constraints": {"sites": ["hpc"]}, "retries": 0}])
    wf = lcp.wait_workflow(wid, timeout=120)
    run = lcp.runs(wid, "in-image")[0]
    assert wf["state"] == "Succeeded" and run["exitCode"] == 0, run
    assert MARKER in lcp.get(f"/v1/runs/{run['id']}")["outputTail"]
