"""Quantities, durations and the domain model's rules (table-driven)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from continuum.model import PowerProfile, Task, WorkflowDocument
from continuum.units import format_bytes, format_duration, parse_bytes, parse_cpu, parse_duration


@pytest.mark.parametrize(("raw", "cores"), [
    ("500m", 0.5), ("2", 2.0), (2, 2.0), (1.5, 1.5), ("0.25", 0.25), ("1500m", 1.5), ("0", 0.0),
])
def test_cpu(raw: object, cores: float) -> None:
    assert parse_cpu(raw) == cores


@pytest.mark.parametrize(("raw", "nbytes"), [
    ("512Mi", 512 * 2**20), ("2Gi", 2 * 2**30), ("1G", 10**9), ("100k", 100_000),
    (1024, 1024), ("1e3", 1000), ("1.5Ki", 1536), ("1Ti", 2**40),
])
def test_bytes(raw: object, nbytes: int) -> None:
    assert parse_bytes(raw) == nbytes


@pytest.mark.parametrize(("raw", "seconds"), [
    ("30s", 30.0), ("2h", 7200.0), ("1h30m", 5400.0), ("500ms", 0.5), (45, 45.0), ("45", 45.0),
    ("1d", 86400.0), ("2m30s", 150.0),
])
def test_duration(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(("parser", "raw", "needle"), [
    (parse_cpu, "lots", "millicores like 500m"),
    (parse_cpu, "2Gi", "millicores like 500m"),
    (parse_cpu, -1, ">= 0"),
    (parse_cpu, True, "not a quantity"),
    (parse_bytes, "12XB", "Ki/Mi/Gi/Ti"),
    (parse_bytes, "-5Mi", "Ki/Mi/Gi/Ti"),
    (parse_duration, "soon", "30s, 5m, 2h"),
    (parse_duration, "5x", "30s, 5m, 2h"),
    (parse_duration, "1h 30m", "30s, 5m, 2h"),
])
def test_bad_values_say_how_to_fix(parser: object, raw: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        parser(raw)  # type: ignore[operator]


def test_formatting() -> None:
    assert format_bytes(3 * 2**30) == "3Gi" and format_bytes(10) == "10"
    assert format_duration(0.85) == "850ms" and format_duration(3725) == "1h02m"


def test_unknown_fields_are_rejected_everywhere() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        Task.model_validate({"name": "t", "command": ["x"], "resources": {"cpus": 2}})


def test_power_profile_max_must_exceed_idle() -> None:
    with pytest.raises(ValidationError, match="must be >= idleWatts"):
        PowerProfile(idle_watts=10, max_watts=5)


def test_workflow_round_trips_in_camel_case() -> None:
    doc = WorkflowDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": "w"},
        "spec": {"tasks": [{"name": "t", "script": {"source": "print(1)"},
                            "dependsOn": [], "slo": {"target": "floor", "latencyMs": 5}}]}})
    wire = doc.wire()
    assert wire["spec"]["tasks"][0]["slo"] == {"target": "floor", "latencyMs": 5.0}
    assert WorkflowDocument.model_validate(wire) == doc
