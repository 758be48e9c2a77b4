"""The slurmdb job mapping (adapters/slurm/accounting.py) on answers captured from a real
slurmrestd 24.11 with slurmdbd on MariaDB (tests/adapters/slurm/data/slurmdb_24.11_*).

How they were captured: jobs submitted with ``sbatch`` (JobAcctGatherType=jobacct_gather/
linux, AccountingStorageTRES=cpu,mem,energy,node,billing, no AcctGatherEnergyType), then
``GET /slurmdb/v0.0.4x/job/{id}``. ``sacct -j 4 -o jobid,state,exitcode,elapsed,totalcpu,
maxrss,consumedenergy`` said of job 4: COMPLETED 0:0 00:00:05 00:02.020, batch step MaxRSS
32960K, ConsumedEnergy 0.
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.slurm.accounting import parse_job, read_job, served, supported

DATA = Path(__file__).parent / "data"


def captured(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((DATA / f"slurmdb_24.11_{name}.json").read_text())
    return body


@pytest.mark.parametrize("version", ["v0.0.40", "v0.0.41", "v0.0.42"])
def test_a_completed_job_reads_as_sacct_shows_it(version: str) -> None:
    body = captured(f"job4_{version}")
    acct = read_job(lambda path: body if path == f"/slurmdb/{version}/job/4" else {},
                    version, 4)
    assert acct is not None
    assert (acct.job_id, acct.state, acct.exit_code, acct.signal) == (4, "COMPLETED", 0, None)
    assert acct.elapsed_s == 5.0
    assert acct.cpu_time_s == pytest.approx(2.020874, abs=1e-6)  # sacct TotalCPU 00:02.020
    assert acct.max_rss_bytes == 32960 * 1024  # sacct MaxRSS 32960K
    assert acct.energy_j is None  # no AcctGatherEnergyType: Slurm's 0 means unknown
    assert acct.finished
    assert acct.to_json()["maxRssBytes"] == 32960 * 1024


def test_failed_and_cancelled_jobs() -> None:
    failed = parse_job(captured("job1_v0.0.42")["jobs"][0])
    assert (failed.state, failed.exit_code) == ("FAILED", 3)
    assert failed.max_rss_bytes is None  # ended before its first sample
    assert failed.cpu_time_s > 0  # the job's own figure is 0; its steps' sum is not
    cancelled = parse_job(captured("job3_v0.0.41")["jobs"][0])
    assert cancelled.state == "CANCELLED"


def test_an_unknown_job_is_none_and_old_versions_are_refused() -> None:
    body = captured("job999_v0.0.42")
    assert read_job(lambda _p: body, "v0.0.42", 999) is None
    assert not supported("v0.0.38") and not supported(None) and supported("v0.0.44")
    with pytest.raises(ValueError, match="v0.0.40"):
        read_job(lambda _p: body, "v0.0.38", 999)


def test_the_slurmdb_job_endpoint_is_asked_only_where_the_served_spec_has_it() -> None:
    """26.05's spec as served without ``-s openapi/slurmdbd`` (captured) has no slurmdb
    paths: such a site is never asked (no 404, no warning at each finished job)."""
    paths = json.loads(gzip.decompress((DATA / "openapi-slurm-26.05.5.json.gz").read_bytes()))[
        "paths"]
    assert not served(paths, "v0.0.45")
    with_dbd = [*paths, "/slurmdb/v0.0.45/job/{job_id}"]
    assert served(with_dbd, "v0.0.45") and not served(with_dbd, "v0.0.44")
    assert not served(["/slurmdb/v0.0.38/job/{job_id}"], "v0.0.38")  # legacy: not mapped


def test_consumed_energy_is_summed_over_steps() -> None:
    # the captured job with the energy a measuring plugin would report (the machine the
    # answers were captured on has no RAPL): 1500 J on the batch step, NO_VAL64 elsewhere
    job = copy.deepcopy(captured("job4_v0.0.42")["jobs"][0])
    step = job["steps"][0]
    step["tres"]["consumed"]["total"] = [{"type": "energy", "name": "", "id": 3, "count": 1500}]
    job["steps"].append({"tres": {"consumed": {"total": [
        {"type": "energy", "id": 3, "count": 18446744073709551614}]}}})
    assert parse_job(job).energy_j == 1500.0


def test_the_record_fills_the_run_status() -> None:
    from adapters.slurm.adapter import SlurmAdapter

    acct = parse_job(captured("job4_v0.0.42")["jobs"][0])
    fields = SlurmAdapter._observed(acct)
    assert fields == {"runtime_s": 5.0, "energy_j": None, "cpu_time_s": 2.020874,
                      "max_rss_bytes": 32960 * 1024, "accounting": acct.to_json()}


def test_describe_run_shows_the_accounted_figures() -> None:
    from control_plane.render import explain_run, make_console

    acct = parse_job(captured("job4_v0.0.42")["jobs"][0])
    run = {"id": "run-1", "task": "t", "attempt": 1, "state": "Succeeded", "node": "hpc/debug",
           "site": "hpc", "placement": {"tier": "hpc", "scores": {}, "predicted": {}},
           "observed": {"runtimeS": 5.0, "energyJ": None, "bytesIn": 0, "bytesOut": 0,
                        "cpuTimeS": acct.cpu_time_s, "maxRssBytes": acct.max_rss_bytes,
                        "accounting": acct.to_json()}}
    console = make_console(min_width=120)
    with console.capture() as cap:
        console.print(explain_run(run))
    out = cap.get()
    assert "CPU time (accounted)" in out and "max RSS (accounted)" in out
    assert "32.2Mi" in out and "2.0s" in out
