"""Fixtures shared by the adapter tests.

* ``slurm`` (session): the real single-node Slurm (:class:`SlurmCluster`: munged,
  slurmctld, slurmd and slurmrestd with JWT, started by ``deploy/dev/slurm.sh`` in a
  temporary directory on loopback, stopped at the end). Defined here, once, so that the
  Slurm tests (``tests/adapters/slurm``) and the adapter contract suite
  (``tests/adapters/test_contract.py``) share one cluster per session.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adapters.slurm.conftest import SLURM_SH, SlurmCluster


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A real single-node Slurm for the session (fails with the script's reason if it can't)."""
    # not under pytest's private tmp: slurmrestd and the jobs run as another user
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="continuum-slurm-")))
    try:
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        cluster.sh("stop", str(cluster.dir))
        shutil.rmtree(cluster.dir, ignore_errors=True)
        pytest.fail(f"could not start Slurm with {SLURM_SH}: {e}")
    yield cluster
    cluster.sh("stop", str(cluster.dir))
    shutil.rmtree(cluster.dir, ignore_errors=True)
