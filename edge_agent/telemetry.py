"""Telemetry: CPU, memory, load and modelled power of this device.

Power comes from the linear idle→max model of Fan, Weber & Barroso, "Power provisioning
for a warehouse-sized computer", ISCA 2007: ``P = P_idle + (P_max − P_idle) · u`` with
``u`` the CPU busy fraction (0..1). It is reported with ``power_source = "model"``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from edge_agent.profiles import DeviceProfile
from edge_agent.protocol import DevicePower, Telemetry


def model_power(power: DevicePower, utilisation: float) -> float:
    """Watts drawn at CPU busy fraction ``utilisation`` (clamped to 0..1), linear model.

    Source: Fan, Weber & Barroso, ISCA 2007 (see the module docstring).
    """
    u = min(1.0, max(0.0, utilisation))
    return power.idle_watts + (power.max_watts - power.idle_watts) * u


def tcp_rtt_ms(host: str, port: int, timeout_s: float = 2.0) -> float | None:
    """One round trip (ms) to ``host:port``, measured as the TCP connect time.

    ``connect()`` returns when the SYN-ACK arrives, i.e. after one network round trip
    plus the peer's accept latency (the method of tcping / ``curl -w %{time_connect}``).
    Returns ``None`` when the peer does not answer within ``timeout_s``.
    """
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return (time.perf_counter() - t0) * 1000.0
    except OSError:
        return None


def parse_peer(value: str) -> tuple[str, str, int]:
    """``location=host:port`` → ``(location, host, port)``.

    Raises:
        ValueError: not in that form (the message shows an example).
    """
    loc, sep, addr = value.partition("=")
    host, sep2, port = addr.rpartition(":")
    if not sep or not loc or not sep2 or not host or not port.isdigit():
        raise ValueError(f"RTT peer {value!r} must be location=host:port, e.g. "
                         "munich-edge=10.0.0.5:443")
    return loc, host.strip("[]"), int(port)


BROKER = ""
"""The :class:`RttProber` target name of the agent's broker (no location can be empty)."""
PROBE_WORKERS = 8
"""Targets probed at the same time: a round lasts at most ⌈targets / 8⌉ probe timeouts."""


class RttProber:
    """Measures RTTs (:func:`tcp_rtt_ms`) to ``targets`` on its own threads, off the
    telemetry path: telemetry publishes :meth:`latest` at once, so a blackholed peer
    (each probe waits up to ``timeout_s``) delays only its own figure, never a heartbeat.

    Args:
        targets: name → (host, port); the agent uses ``""`` for its broker.
        interval_s: seconds between the starts of two rounds (a round that takes
            longer is followed at once by the next).
        timeout_s: per-probe connect timeout (s).

    Each result is stored as soon as its probe ends; a target that did not answer in
    its last probe is absent from :meth:`latest`.
    """

    def __init__(self, targets: dict[str, tuple[str, int]], interval_s: float,
                 timeout_s: float = 2.0) -> None:
        self.targets = dict(targets)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.rounds = 0
        self._results: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Probe in the background until :meth:`stop` (no-op without targets)."""
        if not self.targets or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="rtt-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the probes in flight (each ends within ``timeout_s``); returns at once."""
        self._stop.set()

    def latest(self) -> dict[str, float]:
        """name → the last measured RTT (ms) of every target that answered its last probe."""
        with self._lock:
            return dict(self._results)

    def _probe(self, name: str, host: str, port: int) -> None:
        ms = tcp_rtt_ms(host, port, timeout_s=self.timeout_s)
        with self._lock:
            if ms is None:
                self._results.pop(name, None)
            else:
                self._results[name] = ms

    def _loop(self) -> None:
        with ThreadPoolExecutor(max_workers=min(PROBE_WORKERS, len(self.targets)),
                                thread_name_prefix="rtt-probe") as pool:
            while not self._stop.is_set():
                t0 = time.monotonic()
                futures = [pool.submit(self._probe, name, host, port)
                           for name, (host, port) in self.targets.items()]
                for f in futures:
                    f.result()
                self.rounds += 1
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))


class TelemetrySampler:
    """Samples this host with psutil and builds :class:`Telemetry` for ``device_id``.

    CPU percent is measured since the previous sample (psutil's non-blocking mode), so
    the first sample after start covers the time since construction.
    """

    def __init__(self, device_id: str, profile: DeviceProfile) -> None:
        self.device_id = device_id
        self.profile = profile
        psutil.cpu_percent(interval=None)  # prime the counter
        self._last = time.monotonic()

    def sample(self, running: int = 0, rtt_ms: float | None = None,
               peer_rtt_ms: dict[str, float] | None = None) -> Telemetry:
        """One Telemetry message; ``running`` is the number of runs executing now,
        ``rtt_ms`` the round trip to the broker, ``peer_rtt_ms`` location → ms."""
        cpu = psutil.cpu_percent(interval=None)
        mem = psutil.virtual_memory()
        try:
            load1 = os.getloadavg()[0]
        except OSError:  # pragma: no cover - not on Linux
            load1 = 0.0
        total = self.profile.memory if self.profile.emulated else mem.total
        return Telemetry(
            device_id=self.device_id,
            cpu_percent=cpu,
            memory_used=min(mem.used, total),
            memory_total=total,
            load1=load1,
            power_watts=round(model_power(self.profile.power, cpu / 100.0), 3),
            power_source="model",
            running=running,
            rtt_ms=None if rtt_ms is None else round(rtt_ms, 3),
            peer_rtt_ms={k: round(v, 3) for k, v in (peer_rtt_ms or {}).items()},
        )
