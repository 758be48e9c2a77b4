"""The demo's embedded broker (amqtt) makes the production broker's identity checks.

Aspects: started the way ``continuum demo`` starts it (``demo_auth`` + ``EmbeddedBroker``
with a password file in the state directory), it refuses anonymous clients and wrong
passwords; its password file holds hashes only, mode 0600; a device's messages on another
device's topics reach nobody (not even the control plane's user, which reads every device
topic) and it cannot subscribe to another device's ``commands``; the control plane's user
publishes commands that reach the right device. The whole demo on its embedded broker runs
to success: tests/test_end_to_end.py (``test_demo_runs_to_success_on_its_embedded_broker``).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.broker import EmbeddedBroker, demo_auth
from control_plane.demo import AGENTS
from edge_agent.protocol import topic
from tests.helpers import MqttProbe, wait_for

CONTROL = "continuum"
A, B = (a["device_id"] for a in AGENTS)


def Client(broker: EmbeddedBroker, username: str | None, password: str | None) -> MqttProbe:  # noqa: N802
    """A client to the embedded broker (see :class:`tests.helpers.MqttProbe`)."""
    return MqttProbe(broker.host, broker.port, username, password)


@pytest.fixture(scope="module")
def demo_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    state = tmp_path_factory.mktemp("demo-state")
    broker = EmbeddedBroker(auth=demo_auth([a["device_id"] for a in AGENTS], CONTROL),
                            password_file=state / "broker.passwd")
    broker.start()
    yield broker
    broker.stop()


def password(broker: EmbeddedBroker, user: str) -> str:
    assert broker.auth is not None
    return broker.auth.users[user].password


def test_password_file_holds_argon2_hashes_only_mode_0600(demo_broker: EmbeddedBroker) -> None:
    assert demo_broker.password_file is not None
    path = demo_broker.password_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert sorted(line.split(":", 1)[0] for line in text.splitlines()) == sorted([CONTROL, A, B])
    assert all(line.split(":", 1)[1].startswith("$argon2id$") for line in text.splitlines())
    assert not any(password(demo_broker, u) in text for u in (CONTROL, A, B))


def test_fresh_random_passwords_every_start() -> None:
    one, two = demo_auth([A], CONTROL), demo_auth([A], CONTROL)
    assert one.users[A].password != two.users[A].password
    assert one.users[A].password != one.users[CONTROL].password
    assert len(one.users[A].password) >= 32


def test_anonymous_and_wrong_password_are_refused(demo_broker: EmbeddedBroker) -> None:
    anon = Client(demo_broker, None, None)
    assert not anon.accepted, anon.connack
    anon.close()
    wrong = Client(demo_broker, A, password(demo_broker, A) + "x")
    assert not wrong.accepted, wrong.connack
    wrong.close()
    other = Client(demo_broker, A, password(demo_broker, B))  # B's password is not A's
    assert not other.accepted, other.connack
    other.close()
    good = Client(demo_broker, A, password(demo_broker, A))
    assert good.accepted, good.connack
    good.close()


def test_a_device_cannot_publish_on_or_read_another_devices_topics(
        demo_broker: EmbeddedBroker) -> None:
    watcher = Client(demo_broker, CONTROL, password(demo_broker, CONTROL))
    assert watcher.accepted
    assert watcher.subscribe("continuum/v1/devices/#") == ["Granted QoS 1"]
    a = Client(demo_broker, A, password(demo_broker, A))
    b = Client(demo_broker, B, password(demo_broker, B))
    assert a.accepted and b.accepted
    a.c.publish(topic(B, "runs/r-victim"), b"forged", qos=1).wait_for_publish(5)
    a.c.publish(topic(B, "hello"), b"{}", qos=1, retain=True).wait_for_publish(5)
    a.c.publish(topic(A, "telemetry"), b"marker", qos=1).wait_for_publish(5)
    # A's own message (published last) arrives; the forged ones before it never do
    wait_for(lambda: topic(A, "telemetry") in watcher.topics(), 10,
             message=lambda: f"A's own message at the control plane; got {watcher.topics()}")
    assert not [t for t in watcher.topics() if t.startswith(topic(B, ""))], watcher.topics()
    # A may subscribe to its own commands only: not B's, not by wildcard
    assert a.subscribe(topic(B, "commands")) == ["Unspecified error"]
    assert a.subscribe("continuum/v1/devices/+/commands") == ["Unspecified error"]
    assert a.subscribe(topic(A, "#")) == ["Unspecified error"]
    assert a.subscribe(topic(A, "commands")) == ["Granted QoS 1"]
    assert b.subscribe(topic(B, "commands")) == ["Granted QoS 1"]
    # the control plane writes every device's commands; each reaches its device only
    watcher.c.publish(topic(B, "commands"), b"for B", qos=1).wait_for_publish(5)
    watcher.c.publish(topic(A, "commands"), b"for A", qos=1).wait_for_publish(5)
    wait_for(lambda: topic(A, "commands") in a.topics() and topic(B, "commands") in b.topics(),
             10, message=lambda: f"each its own command; A got {a.topics()}, B {b.topics()}")
    assert a.topics() == [topic(A, "commands")]
    for cl in (a, b, watcher):
        cl.close()


def test_without_auth_the_broker_stays_anonymous(tmp_path: Path) -> None:
    """``EmbeddedBroker()`` as before (no users): anonymous clients connect."""
    broker = EmbeddedBroker()
    broker.start()
    try:
        anon = Client(broker, None, None)
        assert anon.accepted, anon.connack
        anon.close()
    finally:
        broker.stop()
