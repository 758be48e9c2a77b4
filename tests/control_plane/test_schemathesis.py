"""Property-based checks of the whole API from its own /openapi.json (schemathesis): for
every operation, generated inputs — valid ones and ones that break the schema — sent with
an admin token and with a user token never get a 5xx. Bounded: a few examples per
operation and mode, derandomized, so it runs in well under a minute."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from control_plane.auth import Role
from tests.control_plane.harness import control_plane
from tests.helpers import admin_token

EXAMPLES = 12
"""Generated inputs per operation and token."""


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[schemathesis.BaseSchema, dict[str, str]]]:
    import tempfile
    with tempfile.TemporaryDirectory(prefix="schemathesis-") as tmp, \
            control_plane(Path(tmp) / "state") as (cp, _):
        tokens = {"admin": admin_token(cp),
                  "user": cp.auth.mint("sam", [Role.user], ["physics"])[0]}
        yield schemathesis.openapi.from_asgi("/openapi.json", cp.app), tokens


def test_no_5xx_for_generated_input(
        api: tuple[schemathesis.BaseSchema, dict[str, str]]) -> None:
    schema, tokens = api
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) > 25
    failures: list[str] = []
    for op, mode in itertools.product(operations, list(schemathesis.GenerationMode)):

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        def check(case: schemathesis.Case) -> None:
            for who, token in tokens.items():
                try:  # the test client raises what the server did not handle: a 500
                    response = case.call(headers={"Authorization": f"Bearer {token}"})
                except Exception as e:
                    raise AssertionError(f"{who}: {case.method} {case.formatted_path} -> "
                                         f"500 ({type(e).__name__}: {e})\n"
                                         f"{case.as_curl_command()}") from e
                assert response.status_code < 500, (
                    f"{who}: {case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}\n{case.as_curl_command()}")

        try:
            check()
        except Unsatisfiable:
            assert mode == schemathesis.GenerationMode.NEGATIVE, op.label
            continue  # nothing to break: the operation has no parameters or body
        except AssertionError as e:
            failures.append(str(e).splitlines()[0] + "\n" + str(e).splitlines()[-1])
    assert failures == [], "\n".join(failures)


def test_a_body_that_is_not_utf8_is_a_422_naming_the_body(tmp_path: Path) -> None:
    """Found by the test above: such a body was a 500 (UnicodeDecodeError)."""
    with control_plane(tmp_path / "state") as (_, client):
        for path in ("/v1/sites", "/v1/workflows", "/v1/placements:preview"):
            r = client.post(path, content=b"\x10\x83\x0f",
                            headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (path, r.text)
            assert r.json()["detail"][0]["loc"] == ["body"]
            assert r.json()["detail"][0]["type"] == "encoding_invalid"
