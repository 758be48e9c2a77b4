"""Settings: grouped by concern, each field documented (docstring and docs/configuration.md),
still read from ``CONTINUUM_<FIELD>``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from control_plane.settings import GROUPS, ReconcilerSettings, Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_field_is_in_exactly_one_group() -> None:
    grouped = [name for g in GROUPS for name in g.model_fields]
    assert sorted(grouped) == sorted(Settings.model_fields)
    assert len(grouped) == len(set(grouped))


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_field_has_a_docstring_and_a_row_in_the_docs(name: str) -> None:
    field = Settings.model_fields[name]
    assert field.description and len(field.description) > 30, name
    rows = [line for line in DOC.read_text().splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"docs/configuration.md must have one row for {name}"
    assert f"`CONTINUUM_{name.upper()}`" in rows[0]


def test_documented_defaults_match_the_code() -> None:
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r"^\| `(\w+)` \| `CONTINUUM_\w+` \| [^|]* \| `([^`]*)` \|", DOC.read_text(), re.M)}
    for name, field in Settings.model_fields.items():
        if field.default is None or isinstance(field.default, Path):
            continue  # "none" / a derived default, said in words
        assert float(rows[name]) == float(field.default) if isinstance(field.default, (int, float)) \
            else rows[name] == str(field.default), name


def test_environment_names_stay_flat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTINUUM_RETRY_BACKOFF_S", "5")
    monkeypatch.setenv("CONTINUUM_PLACEMENT_FRAGMENTATION_WEIGHT", "0")
    s = Settings()
    assert s.retry_backoff_s == 5.0 and s.placement_fragmentation_weight == 0.0
    assert isinstance(s, ReconcilerSettings)  # a Settings serves wherever a group is asked


def test_nonsense_values_are_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="reconcile_interval_s"):
        Settings(reconcile_interval_s=0)
    with pytest.raises(ValidationError, match="port"):
        Settings(port=70000)


def test_the_device_series_limit_reaches_the_metrics(tmp_path: Path) -> None:
    from tests.control_plane.harness import control_plane

    with control_plane(tmp_path, device_series_limit=3) as (cp, _):
        assert cp.metrics.devices.per_device_limit == 3
