"""The agent's RTT measurement: TCP connect time to the broker and to configured peers.

Aspects: a listening peer gives a positive round trip, a closed port gives None;
``--rtt-peer`` values are checked (location=host:port) with an error naming the fix;
telemetry carries the measured figures; probes run off the telemetry path, so a
blackholed peer neither delays the answering peers' figures nor the heartbeat.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from edge_agent.config import AgentConfig
from edge_agent.profiles import get_profile
from edge_agent.telemetry import RttProber, TelemetrySampler, parse_peer, tcp_rtt_ms
from tests.conftest import REPO, free_port
from tests.helpers import wait_for


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
    with pytest.raises(ValueError, match="rtt_peers: .*location=host:port"):
        AgentConfig(device_id="d", rtt_peers=[bad])


def test_cli_names_the_bad_peer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--device-id", "d",
                        "--state-dir", str(tmp_path), "--rtt-peer", "nowhere"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "RTT peer 'nowhere' must be location=host:port" in r.stderr


def test_telemetry_carries_the_measured_rtts() -> None:
    t = TelemetrySampler("d", get_profile(None)).sample(rtt_ms=1.23456, peer_rtt_ms={"e": 2.0})
    assert t.rtt_ms == 1.235 and t.peer_rtt_ms == {"e": 2.0}


@contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port whose SYNs go unanswered: a listener with backlog 0 whose accept
    queue is full (Linux drops SYNs to a full queue), so a connect waits for its timeout
    — a blackholed peer, deterministic without any network."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    try:
        while True:  # fill the queue until a connect no longer completes
            c = socket.socket()
            c.settimeout(0.5)
            held.append(c)
            try:
                c.connect(("127.0.0.1", port))
            except OSError:
                break
        yield port
    finally:
        for c in held:
            c.close()
        srv.close()


def test_a_blackholed_peer_is_measured_off_the_telemetry_path() -> None:
    with blackhole() as hole, socket.socket() as good:
        good.bind(("127.0.0.1", 0))
        good.listen(128)
        assert tcp_rtt_ms("127.0.0.1", hole, timeout_s=0.5) is None  # it really is a hole
        prober = RttProber({"good": ("127.0.0.1", good.getsockname()[1]),
                            **{f"hole-{k}": ("127.0.0.1", hole) for k in range(3)}},
                           interval_s=0.2, timeout_s=5.0)
        prober.start()
        try:
            # the good peer's figure is there while the blackholed probes still wait
            got = wait_for(lambda: prober.latest() or None, 10, message="the good peer's RTT")
            assert set(got) == {"good"} and got["good"] > 0
            assert prober.rounds == 0  # the first round is still waiting on the holes
        finally:
            prober.stop()


def test_telemetry_keeps_its_interval_with_blackholed_peers(agents, observer) -> None:  # type: ignore[no-untyped-def]
    """Four blackholed --rtt-peer (2 s connect timeout each, probed one after the other
    before the fix: a heartbeat every 8 s); telemetry still comes every 0.5 s and carries
    the answering peer's RTT."""
    from edge_agent.protocol import Telemetry, decode, topic

    with blackhole() as hole, socket.socket() as good:
        good.bind(("127.0.0.1", 0))
        good.listen(128)
        peers = [f"hole-{k}=127.0.0.1:{hole}" for k in range(4)]
        args = [a for p in [*peers, f"near=127.0.0.1:{good.getsockname()[1]}"]
                for a in ("--rtt-peer", p)]
        agent = agents.spawn("prober", *args, telemetry_interval=0.5)
        t = topic(agent.device_id, "telemetry")
        # before the fix the first telemetry comes after 0.5 + 4 × 2 s, then every 8.5 s
        wait_for(lambda: len(observer.on(t)) >= 8, 12,
                 message=lambda: f"8 telemetry messages; got {len(observer.on(t))}; "
                 f"agent log: {agent.logs()[-2000:]}")
        last = wait_for(lambda: next((m for m in map(lambda p: decode(Telemetry, p),
                                                     reversed(observer.on(t)))
                                      if "near" in m.peer_rtt_ms), None), 10,
                        message="a telemetry message with the answering peer's RTT")
        assert not any(k.startswith("hole") for k in last.peer_rtt_ms), last
        assert last.rtt_ms is not None and last.rtt_ms > 0  # the broker's RTT too
