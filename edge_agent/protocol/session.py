"""One MQTT session helper for both ends of the device protocol.

The agent (:class:`edge_agent.agent.Agent`) and the ``devices`` adapter
(:class:`adapters.devices.DevicesAdapter`) each keep one long-lived paho-mqtt 2.x
session to the broker. :class:`MqttSession` is that session, written once:

* the client is built from a broker URL (:func:`parse_broker_url`: ``mqtt://host:port``,
  default 1883, or ``mqtts://host:port``, default 8883) with optional user name and
  password, TLS (a CA bundle, optionally without the host-name check) and a last will;
* :meth:`MqttSession.start` connects in the background on paho's loop thread and retries
  forever: every failed attempt, refused connection or lost connection arms one wait of
  :func:`jittered_backoff` seconds (full-jitter exponential between ``reconnect_min`` and
  ``reconnect_max``, by default :data:`RECONNECT_MIN_S` and :data:`RECONNECT_MAX_S`);
  a successful connection resets the attempt count;
* topics given to :meth:`MqttSession.subscribe` are subscribed again on every
  reconnect, before the ``on_connect`` hook runs;
* with ``mqtt5=True`` the session speaks MQTT 5 and a topic subscribed with ``share=GROUP``
  becomes the shared subscription ``$share/GROUP/<filter>`` (MQTT 5 §4.8.2: each message
  goes to one member of the group). Retained messages are not sent on shared
  subscriptions (§4.8.2), so on each connection the plain filter is also subscribed once
  and unsubscribed as soon as its SUBACK arrives: the retained messages the broker queued
  with that SUBACK still arrive, live traffic then goes to the group only. A broker that
  refuses MQTT 5 (CONNACK "Unsupported protocol version", e.g. the embedded amqtt) makes
  the session fall back to MQTT 3.1.1 with plain subscriptions (``fallback_311``); a
  broker that refuses a ``$share`` filter in its SUBACK gets the plain filter instead.
  :attr:`MqttSession.shared` says whether shared subscriptions are in effect;
* :attr:`MqttSession.connected` is set while the session is up; :attr:`last_error`
  says why it is not.

It lives in :mod:`edge_agent.protocol` because adapters may import only that part of
``edge_agent`` (docs/architecture.md, "Packages and import rules"). Importing
:mod:`edge_agent.protocol` itself does not import paho; this module does.

Hooks (all optional, run on paho's loop thread; an exception in one is logged, never
raised into paho): ``on_connect(client)`` after a successful (re)connection, once
:attr:`connected` is set; ``on_disconnect()`` after the connection was lost or closed;
``on_message(client, userdata, message)`` and ``on_publish(client, userdata, mid,
reason_code, properties)`` as paho calls them.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.5
"""Shortest wait (s) before a reconnect attempt: quick enough that a broker restart costs
about a second, long enough not to spin on a refused port."""
RECONNECT_MAX_S = 30.0
"""Longest wait (s) between reconnect attempts: a fleet of agents whose broker was down
for a while comes back spread over at most this long (jitter), not all at once."""


def jittered_backoff(attempt: int, low: float, high: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): full-jitter exponential.

    ``uniform(low, min(high, low·2^attempt))`` — the "full jitter" of AWS's
    "Exponential Backoff and Jitter" (Brooker, 2015), floored at ``low``.
    """
    cap = min(high, low * (2 ** min(attempt, 30)))
    return random.uniform(low, max(low, cap))


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL: ``mqtt://host:port`` (default 1883) or ``mqtts://`` (8883)."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://host[:port]`` or ``mqtts://host[:port]``.

    Raises:
        ValueError: another scheme, or no host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(
            f"broker {url!r} is not a broker URL; use mqtt://host:port or mqtts://host:port"
        )
    tls = parts.scheme == "mqtts"
    return BrokerAddress(host=parts.hostname, port=parts.port or (8883 if tls else 1883), tls=tls)


READ_CHUNK_BYTES = 64 * 1024
"""Bytes asked of the socket per read by :class:`BufferedClient`."""


class BufferedClient(mqtt.Client):
    """paho's client, reading the socket a chunk at a time.

    paho 2.x reads each incoming packet with three or more ``recv`` calls (the command
    byte, each byte of the remaining length, then the rest) and handles one packet per
    ``select``: four system calls and a trip round its loop for every telemetry
    message. This client asks the socket for up to :data:`READ_CHUNK_BYTES` at once,
    serves paho's small reads from that chunk, and handles every packet the chunk holds
    before paho's loop selects again (a chunk is never left waiting on ``select``:
    :meth:`loop_read` returns only once it is used up or the connection is gone). The
    chunk is dropped with the socket.

    An MQTT 5 PUBLISH of QoS 0 or 1 that carries no properties (what Mosquitto forwards
    of the devices' messages) is decoded here instead of by paho, which builds and
    clears a :class:`paho.mqtt.properties.Properties` for every one (about a fifth of
    its loop thread's time: ``python -m bench.control_plane.telemetry_ingest --broker``):
    the message gets ``properties=None``, as an MQTT 3.1.1 one does, and everything else
    as paho sets it (topic, payload, QoS, retain, dup, message id, timestamp; then
    ``on_message`` and the PUBACK of QoS 1). Any other packet — properties present,
    QoS 2, too short for its header, MQTT 3.1.1 — and every packet while paho's logging
    is on go through paho as before. Written against paho-mqtt 2.2's internals
    (``_sock_recv``, ``_in_packet``, ``_handle_publish``, ``_sock_close``):
    tests/edge_agent/test_session_reads.py compares it with paho's own client.
    """

    _chunk: bytes = b""
    _chunk_pos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        chunk, pos = self._chunk, self._chunk_pos
        if pos >= len(chunk):
            # paho's own read (its errors: BlockingIOError when the socket has nothing
            # yet, b"" when the broker closed the connection)
            chunk = super()._sock_recv(READ_CHUNK_BYTES)
            if not chunk:
                return chunk
            self._chunk, pos = chunk, 0
        self._chunk_pos = pos + bufsize
        return chunk[pos:pos + bufsize]

    @property
    def buffered(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return max(0, len(self._chunk) - self._chunk_pos)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None
               and self._chunk_pos < len(self._chunk)):  # every read takes ≥ 1 byte of it
            rc = super().loop_read(max_packets)
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        packet = self._in_packet
        header, data = packet["command"], packet["packet"]
        qos = (header & 0x06) >> 1
        if (self._protocol != mqtt.MQTTv5 or qos > 1 or len(data) < 3
                or self._logger is not None or self.on_log is not None):
            return super()._handle_publish()
        end = 2 + ((data[0] << 8) | data[1])  # after the topic
        at = end + 2 if qos else end  # the properties' length (a variable byte integer)
        if at >= len(data) or data[at] != 0:  # properties present (or malformed): paho's
            return super()._handle_publish()
        message = mqtt.MQTTMessage(mid=(data[end] << 8) | data[end + 1] if qos else 0,
                                   topic=bytes(data[2:end]))
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.payload = bytes(data[at + 1:])
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if qos == 0 or self._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._send_puback(message.mid)

    def _sock_close(self) -> None:
        self._chunk, self._chunk_pos = b"", 0  # what was read belongs to that connection
        super()._sock_close()


@dataclass(frozen=True)
class Will:
    """The last will the broker publishes when the session dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttSession:
    """One paho-mqtt 2.x session with reconnects and restored subscriptions.

    Args:
        broker: ``mqtt://host:port`` or ``mqtts://host:port``.
        client_id: the MQTT client id.
        label: how log lines name the owner (``"device d1"``, ``"site fleet"``).
        clean_session: MQTT 3.1.1 clean-session flag (False keeps QoS 1 messages queued
            at the broker while the session is away); with MQTT 5, clean start (and a
            session that ends with the connection) when True.
        mqtt5: speak MQTT 5 (shared subscriptions; see the module docstring).
        fallback_311: with ``mqtt5``, fall back to MQTT 3.1.1 (plain subscriptions) when
            the broker refuses MQTT 5.
        username, password: broker credentials (none when ``username`` is None).
        tls_ca: CA bundle that signed the broker's certificate (a PEM file path, or the
            PEM text itself); implies TLS.
        tls_insecure: skip the certificate's host-name check (testing only).
        will: the last will, if any.
        keepalive: MQTT keepalive (s).
        reconnect_min, reconnect_max: bounds (s) of the reconnect backoff.

    Raises:
        ValueError: ``broker`` is not a broker URL.
    """

    def __init__(self, broker: str, *, client_id: str, label: str,
                 clean_session: bool = True, username: str | None = None,
                 password: str | None = None, tls_ca: str | None = None,
                 tls_insecure: bool = False, will: Will | None = None, keepalive: int = 30,
                 reconnect_min: float = RECONNECT_MIN_S,
                 reconnect_max: float = RECONNECT_MAX_S, mqtt5: bool = False,
                 fallback_311: bool = True) -> None:
        self.broker = broker
        self.address = parse_broker_url(broker)
        self.label = label
        self.keepalive = keepalive
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connected = threading.Event()
        """Set while the session is up."""
        self.last_error = "not connected yet"
        """Why the session is not up (the last failure), for health reasons and errors."""
        self.on_connect: Callable[[mqtt.Client], None] | None = None
        self.on_disconnect: Callable[[], None] | None = None
        self.on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None] | None = None
        self.on_publish: Callable[..., None] | None = None
        self._subscriptions: dict[str, tuple[int, str | None]] = {}
        """topic filter → (QoS, share group or None)."""
        self._sub_lock = threading.Lock()
        self._catch_up: dict[int, str] = {}
        """SUBSCRIBE message id → plain filter to unsubscribe at its SUBACK."""
        self._unsubscribing: set[int] = set()
        """UNSUBSCRIBE message ids of catch-up twins not yet acknowledged."""
        self._share_mids: dict[int, tuple[str, int]] = {}
        """SUBSCRIBE message id of a ``$share`` filter → (plain filter, QoS)."""
        self._share_refused = False
        self._clean_session = clean_session
        self._fallback_311 = fallback_311
        self._attempt = 0
        self._stopping = False
        c: mqtt.Client
        if mqtt5:
            c = BufferedClient(CallbackAPIVersion.VERSION2, client_id=client_id,
                               protocol=mqtt.MQTTv5)
        else:
            c = BufferedClient(CallbackAPIVersion.VERSION2, client_id=client_id,
                               clean_session=clean_session, protocol=mqtt.MQTTv311)
        if username:
            c.username_pw_set(username, password)
        if tls_ca and tls_ca.lstrip().startswith("-----BEGIN"):  # the CA's PEM text itself
            c.tls_set_context(ssl.create_default_context(cadata=tls_ca))
            c.tls_insecure_set(tls_insecure)
        elif self.address.tls or tls_ca:
            c.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
            c.tls_insecure_set(tls_insecure)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        self.client = c
        """The paho client (publish through it or :meth:`publish`)."""
        self._arm_backoff()

    # ------------------------------------------------------------ use

    @property
    def mqtt5(self) -> bool:
        """Whether the session speaks MQTT 5 (False after a fallback to 3.1.1)."""
        return bool(self.client.protocol == mqtt.MQTTv5)

    @property
    def shared(self) -> bool:
        """Whether subscriptions made with ``share`` are shared ones now: MQTT 5 and the
        broker did not refuse a ``$share`` filter."""
        return self.mqtt5 and not self._share_refused

    @property
    def catching_up(self) -> bool:
        """Whether a plain catch-up twin of a shared subscription may still be subscribed
        (its SUBACK or the UNSUBACK of its removal not yet received): meanwhile a live
        message can come on both, i.e. to this replica and to another one (harmless: run
        updates are ordered by ``seq``)."""
        with self._sub_lock:
            return bool(self._catch_up or self._unsubscribing)

    def subscribe(self, topic: str, qos: int = 1, share: str | None = None) -> None:
        """Subscribe to ``topic`` now if connected, and again on every reconnect.

        ``share``: a share group name; the subscription is then ``$share/<share>/<topic>``
        while :attr:`shared` (see the module docstring), the plain ``topic`` otherwise.
        """
        with self._sub_lock:
            self._subscriptions[topic] = (qos, share)
        if self.connected.is_set():
            self._subscribe(self.client, topic, qos, share)

    def _subscribe(self, client: mqtt.Client, topic: str, qos: int, share: str | None) -> None:
        if share is None or not self.shared:
            client.subscribe(topic, qos=qos)
            return
        rc, mid = client.subscribe(f"$share/{share}/{topic}", qos=qos)
        if mid is not None:
            with self._sub_lock:
                self._share_mids[mid] = (topic, qos)
        rc, mid = client.subscribe(topic, qos=qos)  # once, for the retained messages
        if mid is not None:
            with self._sub_lock:
                self._catch_up[mid] = topic

    def publish(self, topic: str, payload: bytes, qos: int = 1,
                retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Hand one message to paho (its ``rc`` says whether it was queued)."""
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def start(self) -> None:
        """Connect in the background (retrying forever) on paho's loop thread."""
        # MQTT 5: clean start on every connection (paho's default only on the first) when
        # clean_session; the session then ends with the connection (no expiry interval)
        clean_start = True if self._clean_session else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        self.client.connect_async(self.address.host, self.address.port, keepalive=self.keepalive,
                                  clean_start=clean_start)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect (the will is not sent) and stop the loop thread."""
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------ paho callbacks

    def _arm_backoff(self) -> float:
        delay = jittered_backoff(self._attempt, self.reconnect_min, self.reconnect_max)
        self._attempt += 1
        # paho waits min_delay before the next attempt when its own delay is reset,
        # which reconnect_delay_set does; so this arms exactly one jittered wait.
        self.client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]
        return delay

    def _hook(self, name: str, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # a bug in a hook must not kill paho's loop thread
            log.exception("%s: MQTT %s hook failed", self.label, name)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    properties: Any = None) -> None:
        if rc.is_failure:
            self.last_error = f"connection refused: {rc}"
            if (self.mqtt5 and self._fallback_311
                    and str(rc) == "Unsupported protocol version"):
                # paho has no public switch of protocol; the next attempt sends a 3.1.1
                # CONNECT (client._protocol is what _send_connect reads)
                client._protocol = mqtt.MQTTv311  # type: ignore[attr-defined]
                client._clean_session = self._clean_session  # type: ignore[attr-defined]
                log.warning("%s: broker %s does not speak MQTT 5; using MQTT 3.1.1 (no "
                            "shared subscriptions: every subscriber gets every message)",
                            self.label, self.broker)
            delay = self._arm_backoff()
            log.error("%s: broker %s refused the connection: %s; retrying in %.1f s",
                      self.label, self.broker, rc, delay)
            return
        self._attempt = 0
        with self._sub_lock:
            subs = list(self._subscriptions.items())
            self._catch_up.clear()
            self._unsubscribing.clear()
            self._share_mids.clear()
        for t, (qos, share) in subs:
            self._subscribe(client, t, qos, share)
        self.connected.set()
        log.info("%s: connected to %s", self.label, self.broker)
        self._hook("on_connect", self.on_connect, client)

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, *_: Any) -> None:
        with self._sub_lock:
            self._unsubscribing.discard(mid)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any = None) -> None:
        with self._sub_lock:
            plain = self._catch_up.pop(mid, None)
            shared = self._share_mids.pop(mid, None)
        if plain is not None:  # the retained messages are queued: live ones go to the group
            _, unsub_mid = client.unsubscribe(plain)
            if unsub_mid is not None:
                with self._sub_lock:
                    self._unsubscribing.add(unsub_mid)
        if shared is not None and any(r.is_failure for r in reason_codes):
            # e.g. 0x9E "Shared Subscriptions not supported": keep the plain filter (its
            # catch-up twin, acknowledged after this SUBACK) subscribed for good
            self._share_refused = True
            with self._sub_lock:
                twins = [m for m, t in self._catch_up.items() if t == shared[0]]
                for m in twins:
                    del self._catch_up[m]
            if not twins:
                client.subscribe(shared[0], qos=shared[1])
            log.warning("%s: broker %s refused the shared subscription to %s (%s); "
                        "subscribed to it plainly", self.label, self.broker, shared[0],
                        ", ".join(map(str, reason_codes)))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.last_error = "connection failed"
        delay = self._arm_backoff()
        log.warning("%s: broker %s unreachable; retrying in %.1f s", self.label, self.broker,
                    delay)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       properties: Any = None) -> None:
        self.connected.clear()
        self.last_error = f"disconnected: {rc}"
        if not self._stopping:
            delay = self._arm_backoff()
            log.warning("%s: disconnected from %s (%s); reconnecting in %.1f s", self.label,
                        self.broker, rc, delay)
        self._hook("on_disconnect", self.on_disconnect)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._hook("on_message", self.on_message, client, userdata, msg)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any,
                    properties: Any = None) -> None:
        self._hook("on_publish", self.on_publish, client, userdata, mid, rc, properties)


__all__ = ["READ_CHUNK_BYTES", "RECONNECT_MAX_S", "RECONNECT_MIN_S", "BrokerAddress",
           "BufferedClient", "MqttSession", "Will",
           "jittered_backoff", "parse_broker_url"]
