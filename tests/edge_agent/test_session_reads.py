"""How the session's paho client reads PUBLISH packets (edge_agent/protocol/session.py,
:class:`BufferedClient`), over a socket pair, no broker.

Aspects: one ``loop_read`` handles every packet the socket holds (paho's own client one
per call); a packet split across reads is handled once complete; every packet is
decoded as paho decodes it — topic, payload, QoS, retain, dup, message id, the PUBACK of
QoS 1 — with ``properties`` None where the packet has none and paho's Properties where
it has some; the chunk read ahead goes with the socket.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.protocol.session import BufferedClient


def publish(topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
            dup: bool = False, mid: int = 0, props: bytes = b"\x00") -> bytes:
    """An MQTT 5 PUBLISH packet (``props``: its properties, length first)."""
    t = topic.encode()
    var = struct.pack("!H", len(t)) + t + (struct.pack("!H", mid) if qos else b"") + props
    body = var + payload
    n, length = len(body), b""
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([0x30 | dup << 3 | qos << 1 | retain]) + length + body


PACKETS = [
    publish("continuum/v1/devices/d1/telemetry", b'{"v":1}'),
    publish("continuum/v1/devices/d2/runs/r-1", b"x" * 300, qos=1, mid=7, retain=True),
    publish("continuum/v1/devices/d3/hello", b"", qos=1, mid=65535, dup=True),
    publish("continuum/v1/devices/d4/status", b"online",
            props=b"\x05\x02\x00\x00\x00\x3c"),  # message expiry interval 60 s
    publish("continuum/v1/devices/d5/telemetry", b"y" * 70_000),  # longer than a chunk
]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def client(cls: type[mqtt.Client], sock: socket.socket) -> tuple[mqtt.Client, list[Any]]:
    c = cls(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    got: list[Any] = []
    c.on_message = lambda _c, _u, m: got.append(m)
    c._sock = sock  # type: ignore[assignment]  # as paho's connect leaves it
    return c, got


def fields(m: mqtt.MQTTMessage) -> tuple[Any, ...]:
    return (m.topic, bytes(m.payload), m.qos, m.retain, m.dup, m.mid)


def drain(peer: socket.socket) -> bytes:
    peer.setblocking(False)
    out = b""
    while True:
        try:
            got = peer.recv(65536)
        except BlockingIOError:
            return out
        if not got:
            return out
        out += got


def test_one_read_handles_every_packet_the_socket_holds(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    c, got = client(BufferedClient, a)
    b.sendall(PACKETS[0] * 3)
    assert c.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert len(got) == 3 and isinstance(c, BufferedClient) and c.buffered == 0

    a2, b2 = socket.socketpair()
    a2.setblocking(False)
    plain, got_plain = client(mqtt.Client, a2)  # paho's: one packet per read
    b2.sendall(PACKETS[0] * 3)
    plain.loop_read()
    assert len(got_plain) == 1
    plain._sock_close()
    b2.close()


def test_a_packet_split_across_reads_is_handled_once_complete(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    c, got = client(BufferedClient, a)
    p = PACKETS[1]
    b.sendall(p[:20])
    c.loop_read()
    assert got == []
    b.sendall(p[20:] + PACKETS[0][:1])
    c.loop_read()
    assert [fields(m) for m in got] == [
        ("continuum/v1/devices/d2/runs/r-1", b"x" * 300, 1, True, False, 7)]
    b.sendall(PACKETS[0][1:])
    c.loop_read()
    assert len(got) == 2 and got[1].topic == "continuum/v1/devices/d1/telemetry"


def test_packets_are_decoded_as_paho_decodes_them() -> None:
    results = []
    for cls in (mqtt.Client, BufferedClient):
        a, b = socket.socketpair()  # its own: a client closes its socket when collected
        a.setblocking(False)
        c, got = client(cls, a)
        for k, p in enumerate(PACKETS):  # one at a time: paho's reads one packet a call
            b.sendall(p)
            while len(got) < k + 1:
                c.loop_read()
        results.append((got, drain(b)))
        c._sock_close()
        b.close()
    (theirs, acks_theirs), (ours, acks_ours) = results
    assert [fields(m) for m in ours] == [fields(m) for m in theirs]
    assert acks_ours == acks_theirs and len(acks_ours) == 2 * 4  # two PUBACKs
    for m, p in zip(ours, theirs, strict=True):
        assert m.timestamp > 0
        if p.properties is not None and hasattr(p.properties, "MessageExpiryInterval"):
            assert m.properties is not None and m.properties.MessageExpiryInterval == 60
        else:  # none in the packet: paho's empty Properties, ours None (as MQTT 3.1.1)
            assert m.properties is None


def test_the_chunk_read_ahead_goes_with_the_socket(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    c, got = client(BufferedClient, a)
    assert isinstance(c, BufferedClient)
    c._chunk, c._chunk_pos = PACKETS[0] * 2, 0  # read ahead, not handled yet
    assert c.buffered == 2 * len(PACKETS[0])
    c._sock_close()
    assert c.buffered == 0 and c._sock is None
