"""The MQTT session helper (edge_agent/protocol/session.py) against a private real Mosquitto.

Aspects: subscriptions made before and after connecting are both restored after a
broker restart (the restarted broker keeps no state); ``connected``/``last_error``
follow the connection; the on_connect hook runs on every (re)connection; bad URLs are
refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.protocol.session import MqttSession
from tests.conftest import Mosquitto, free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.mosquitto


def test_subscriptions_are_restored_after_a_broker_restart(tmp_path: Path) -> None:
    broker = Mosquitto(dir=tmp_path / "broker", port=free_port())
    broker.start()
    got: list[tuple[str, bytes]] = []
    connects: list[int] = []
    s = MqttSession(broker.url, client_id="session-test-sub", label="test", reconnect_max=1)
    s.on_message = lambda client, userdata, msg: got.append((msg.topic, bytes(msg.payload)))
    s.on_connect = lambda client: connects.append(1)
    pub = MqttSession(broker.url, client_id="session-test-pub", label="test-pub",
                      reconnect_max=1)
    try:
        s.subscribe("t/before", qos=1)  # before the session is up
        s.start()
        pub.start()
        wait_for(lambda: s.connected.is_set() and pub.connected.is_set(), 10,
                 message="both sessions connected")
        s.subscribe("t/after", qos=1)  # while it is up

        def delivered(t: str, payload: bytes) -> bool:
            pub.publish(t, payload, qos=1)
            return (t, payload) in got

        wait_for(lambda: delivered("t/before", b"1") and delivered("t/after", b"1"), 10,
                 interval=0.2, message=lambda: f"both topics delivered: {got}")

        broker.stop()
        wait_for(lambda: not s.connected.is_set(), 10, message="session sees the broker gone")
        assert s.last_error.startswith("disconnected") or s.last_error == "connection failed"
        broker.start()
        wait_for(lambda: s.connected.is_set() and pub.connected.is_set(), 20,
                 message="both sessions reconnected")
        assert len(connects) == 2
        wait_for(lambda: delivered("t/before", b"2") and delivered("t/after", b"2"), 10,
                 interval=0.2, message=lambda: f"both topics delivered after restart: {got}")
    finally:
        s.stop()
        pub.stop()
        broker.stop()


@pytest.mark.parametrize("url", ["http://broker:1883", "mqtt://", "broker:1883"])
def test_a_bad_broker_url_is_refused_by_name(url: str) -> None:
    with pytest.raises(ValueError, match="mqtt://host:port"):
        MqttSession(url, client_id="x", label="test")


def test_an_absent_broker_is_retried_and_said(tmp_path: Path) -> None:
    s = MqttSession(f"mqtt://127.0.0.1:{free_port()}", client_id="session-test-absent",
                    label="test", reconnect_max=0.5)
    seen: list[Any] = []
    s.on_connect = seen.append
    try:
        s.start()
        wait_for(lambda: s.last_error == "connection failed", 10,
                 message=lambda: f"a failed attempt recorded (last error {s.last_error!r})")
        assert not s.connected.is_set() and seen == []
    finally:
        s.stop()
