"""The agent's RTT measurement: TCP connect time to the broker and to configured peers.

Aspects: a listening peer gives a positive round trip, a closed port gives None;
``--rtt-peer`` values are checked (location=host:port) with an error naming the fix;
telemetry carries the measured figures.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from pydantic import ValidationError

from edge_agent.config import AgentConfig
from edge_agent.profiles import get_profile
from edge_agent.telemetry import TelemetrySampler, parse_peer, tcp_rtt_ms
from tests.conftest import REPO, free_port


def test_round_trip_to_a_listening_peer_and_none_to_a_closed_port() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        ms = tcp_rtt_ms("127.0.0.1", srv.getsockname()[1])
    assert ms is not None and 0 < ms < 1000
    assert tcp_rtt_ms("127.0.0.1", free_port(), timeout_s=1) is None


@pytest.mark.parametrize("value, parsed", [
    ("edge=10.0.0.5:443", ("edge", "10.0.0.5", 443)),
    ("lab=[::1]:8080", ("lab", "::1", 8080)),
])
def test_parse_peer(value: str, parsed: tuple[str, str, int]) -> None:
    assert parse_peer(value) == parsed


@pytest.mark.parametrize("bad", ["10.0.0.5:443", "edge=10.0.0.5", "edge=:443", "edge=h:x"])
def test_bad_peer_is_rejected_with_the_fix(bad: str) -> None:
    with pytest.raises(ValueError, match="must be location=host:port, e.g."):
        parse_peer(bad)
    with pytest.raises(ValidationError, match="location=host:port"):
        AgentConfig(device_id="d", rtt_peers=[bad])


def test_cli_names_the_bad_peer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--device-id", "d",
                        "--state-dir", str(tmp_path), "--rtt-peer", "nowhere"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "RTT peer 'nowhere' must be location=host:port" in r.stderr


def test_telemetry_carries_the_measured_rtts() -> None:
    t = TelemetrySampler("d", get_profile(None)).sample(rtt_ms=1.23456, peer_rtt_ms={"e": 2.0})
    assert t.rtt_ms == 1.235 and t.peer_rtt_ms == {"e": 2.0}
