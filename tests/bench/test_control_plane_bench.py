"""The control-plane bench at toy sizes, on real servers and a real Mosquitto: its one
command prints the live-work table with a row per size in which every submitted task
completed, and the fleet bench sees every simulated device and its telemetry. Shapes and
completeness only; timings are never asserted."""

from __future__ import annotations

import pytest

from bench.control_plane import fleet
from bench.control_plane.__main__ import main


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first markdown table whose header starts
    with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_quick_live_work_completes_every_task(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--quick", "--only", "live", "--sizes", "20", "--timeout", "240"])
    out = capsys.readouterr().out
    header = "| live tasks | tasks completed/s | mean cycle (s) | p99 cycle (s) |"
    assert header in out, out
    rows = _table_rows(out, "| live tasks | tasks completed/s")
    assert len(rows) == 1, out
    row = rows[0]
    assert len(row) == 11, row
    assert row[0] == "20"
    assert int(row[5]) >= 1, row  # cycles measured while the work ran
    assert row[-1] == "yes", row  # 2/2 workflows and 20/20 tasks Succeeded
    assert rc == 0, out


def test_fleet_every_device_visible_and_heard() -> None:
    result = fleet.run(20, [40], seconds=2, surge_timeout=60, drain_timeout=60)
    assert result.missing_after_surge == 0
    assert result.visible_seconds is not None
    [rate] = result.rates
    assert rate.sent > 0
    assert rate.never_arrived == 0  # every device's last telemetry reached the server
    table = fleet.table([result])
    assert "| 20 |" in table
    assert len(_table_rows(table, "| devices | msgs/s asked")) == 1
