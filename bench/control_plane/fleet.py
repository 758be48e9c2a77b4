"""A fleet of simulated devices against a real Mosquitto and one control plane: does every
device appear after a connection surge, and what do telemetry messages cost the server
(CPU) and how far behind it falls (lag) at a given rate.

The simulated devices speak the device wire protocol v1 (:mod:`edge_agent.protocol`) as
``continuum-agent`` does on connect — a retained :class:`Hello` and a retained online
:class:`DeviceStatus` at QoS 1, the offline status as last will — and then only
:class:`Telemetry` (QoS 0); they run no work. All of them live in this one process: one
paho-mqtt client per device, driven by one select loop (paho's external-loop API), so a
fleet of thousands costs one thread. The broker is a private Mosquitto started with
``deploy/dev/mosquitto.sh`` (anonymous, its default settings); the control plane has one
``devices`` site on it (no enrolment required) and, with ``--busy-tasks``, a sim site of
1,000 nodes that the bench keeps busy with live work during the telemetry phases.

Phases, on one server:

1. **surge** — every device connects as fast as the simulator can open connections; the
   bench polls ``GET /v1/devices``'s ``total`` (a page of one, twice a second, the count
   printed every 10 s) and, once it reaches the fleet, lists every device to check each has
   its Hello (or ``--surge-timeout`` passes); it reports the connect rate, the time until all were
   visible, how many never appeared, and how many devices' Hellos the broker
   acknowledged (PUBACK: the device did announce itself; the control plane missed it);
2. **idle** — the connected fleet sends nothing for ``--fleet-seconds`` while the bench
   scrapes ``/metrics`` once a second as in the telemetry phases: the server's CPU, which
   the per-message CPU figure subtracts;
3. **telemetry** — for each rate in ``--rates``, the devices take turns sending telemetry
   at that total rate (msgs/s) for ``--fleet-seconds``. Server CPU is user+system time over the
   phase (% of one core). Lag: each device's latest telemetry timestamp the server
   exports on ``/metrics`` (``continuum_device_telemetry_timestamp_seconds``) is matched
   to what was sent; a device's lag at a scrape is the age of its oldest message the
   server has not yet taken in (0 when it is up to date); the bench reports the largest
   lag over devices, its median and maximum over the scrapes (one per second), and after
   the last message, how long until the server had every device's last one ("drain") or
   how many it never got. The per-device timestamps are exported only up to
   the server's ``device_series_limit`` devices, so lag is measured up to there.

A fleet larger than one process's file descriptors (``ulimit -n``: one socket per device
in the simulator, one per connection at the broker) is spread over ``--edge-brokers``
Mosquittos bridged to the control plane's (``MOSQUITTO_BRIDGE`` of
``deploy/dev/mosquitto.sh``, as a site's broker would be) and ``--sim-processes``
simulator processes; the devices connect to the edge brokers in turn. Such a fleet runs
the surge and idle phases only (``--rates`` with no value): the telemetry phases read
each device's send times, which live in one process.

Reproduce::

    python -m bench.control_plane.fleet --devices 1000 --rates 1000 5000
    python -m bench.control_plane.fleet --devices 100000 --rates --edge-brokers 6 \
        --sim-processes 6 --surge-timeout 900
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import multiprocessing.connection
import os
import selectors
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from bench.control_plane.live import submit_all
from bench.control_plane.server import REPO, Server, sim_federation
from bench.control_plane.submit import free_port
from edge_agent.protocol import DevicePower, DeviceStatus, Hello, Telemetry, encode, topic

MOSQUITTO_SH = REPO / "deploy" / "dev" / "mosquitto.sh"


class SimDevice:
    """One simulated device: a paho client that announces itself on connect."""

    def __init__(self, device_id: str, port: int, source: str = "") -> None:
        self.id = device_id
        self.source = source
        self.connected = False
        self.announce_pending = False
        self.hello_mid: int | None = None
        self.hello_acked = False  # the broker acknowledged the Hello (PUBACK)
        self.sent: collections.deque[float] = collections.deque()  # telemetry send times
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                        protocol=mqtt.MQTTv311)
        c.will_set(topic(device_id, "status"),
                   encode(DeviceStatus(device_id=device_id, state="offline")), qos=1,
                   retain=True)
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        self.client = c
        self.port = port

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if rc == 0:
            self.connected = True
            self.announce_pending = True  # published by the loop, outside paho's callback

    def announce(self) -> None:
        """Publish the retained Hello and online status (QoS 1), as the agent does."""
        self.announce_pending = False
        client = self.client
        hello = Hello(device_id=self.id, hostname=self.id, arch="aarch64", cpus=4,
                      memory=4 * 2**30, location="dc", agent_version="bench-sim",
                      power=DevicePower(idle_watts=3, max_watts=7, source="bench figure"),
                      emulated=True)
        self.hello_mid = client.publish(topic(self.id, "hello"), encode(hello), qos=1,
                                        retain=True).mid
        client.publish(topic(self.id, "status"),
                       encode(DeviceStatus(device_id=self.id, state="online")), qos=1,
                       retain=True)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any,
                    props: Any = None) -> None:
        if mid == self.hello_mid:
            self.hello_acked = True

    def telemetry(self) -> None:
        """Publish one Telemetry (QoS 0) dated now; remembers when."""
        now = time.time()
        t = Telemetry(device_id=self.id, at=datetime.fromtimestamp(now, UTC), cpu_percent=12.5,
                      memory_used=2**30, memory_total=4 * 2**30, load1=0.3, power_watts=3.5)
        self.sent.append(now)
        self.client.publish(topic(self.id, "telemetry"), encode(t), qos=0)


def device_ids(n: int) -> list[str]:
    """The simulated devices' ids, in connection order."""
    return [f"simdev-{i:06d}" for i in range(n)]


PER_SOURCE = 20_000
"""Devices per loopback source address: Linux's ephemeral ports (32768–60999 by
default) run out near 28,000 connections from one address."""


def source_address(i: int) -> str:
    """Device ``i``'s loopback source address: ``127.0.0.1`` for the first
    :data:`PER_SOURCE`, then ``127.0.1.1``, ``127.0.2.1``, ..."""
    return f"127.0.{i // PER_SOURCE}.1"


class Fleet(threading.Thread):
    """:class:`SimDevice` ``ids[i]`` on broker port ``ports[i % len(ports)]`` from source
    address ``sources[i]`` (default :func:`source_address`), driven by one select loop in
    this thread; ``rate`` (settable) is the total telemetry messages/s, 0 for none."""

    def __init__(self, ids: list[str], ports: list[int],
                 sources: list[str] | None = None) -> None:
        super().__init__(daemon=True)
        sources = sources or [source_address(i) for i in range(len(ids))]
        self.devices = [SimDevice(d, ports[i % len(ports)], sources[i])
                        for i, d in enumerate(ids)]
        self.rate = 0.0
        self.sent = 0
        self.stop_event = threading.Event()
        self.connect_seconds = 0.0
        self.connected = threading.Event()  # every device's connect is under way
        self.dropped = 0  # connections the broker closed (not reconnected)
        self.lock = threading.Lock()  # taken by readers of SimDevice.sent
        self.error: str | None = None  # why the loop stopped, if it failed

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.error = f"{type(e).__name__}: {e}"
            raise

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        t0 = last_misc = time.monotonic()
        for i, d in enumerate(self.devices):  # the surge: connect all as fast as we can
            d.client.connect("127.0.0.1", d.port, keepalive=60, bind_address=d.source)
            sock = d.client.socket()
            if sock is None:
                raise RuntimeError(f"{d.id}: no socket after connect")
            sel.register(sock, selectors.EVENT_READ, d)
            if d.client.want_write():
                d.client.loop_write()
            for key, _ in sel.select(0):
                self._read_one(sel, key)
                if key.data.announce_pending:
                    key.data.announce()
            if time.monotonic() - last_misc > 1:  # keepalive pings of those connected
                last_misc = time.monotonic()
                for c in self.devices[:i]:
                    c.client.loop_misc()
        self.connect_seconds = time.monotonic() - t0
        self.connected.set()
        nxt = 0
        owed = 0.0
        last = last_misc = time.monotonic()
        while not self.stop_event.is_set():
            self._pump(sel, 0.005)
            now = time.monotonic()
            owed += self.rate * (now - last)
            last = now
            with self.lock:
                while owed >= 1:
                    d = self.devices[nxt]
                    nxt = (nxt + 1) % len(self.devices)
                    owed -= 1
                    if d.connected:
                        d.telemetry()
                        self.sent += 1
            if now - last_misc > 1:
                last_misc = now
                for d in self.devices:
                    d.client.loop_misc()
        for d in self.devices:
            d.client.disconnect()
            self._pump(sel, 0)
        sel.close()

    def _read_one(self, sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        """Read what the broker sent device ``key.data``; a connection the broker closed
        leaves the selector (its descriptor number is reused by the next socket)."""
        d = key.data
        d.client.loop_read()
        if d.client.socket() is not key.fileobj:
            sel.unregister(key.fileobj)
            d.connected = False
            self.dropped += 1

    def _read(self, sel: selectors.BaseSelector, timeout: float) -> None:
        for key, _ in sel.select(timeout):
            self._read_one(sel, key)

    def _pump(self, sel: selectors.BaseSelector, timeout: float) -> None:
        self._read(sel, timeout)
        for d in self.devices:
            if d.announce_pending:
                d.announce()
            if d.client.want_write():
                d.client.loop_write()


def _fleet_process(ids: list[str], ports: list[int], sources: list[str],
                   conn: multiprocessing.connection.Connection) -> None:
    """A :class:`Fleet` in a process of its own (:class:`ProcessFleet`): sends its
    connect time once every device's connect is under way, then, when asked (any
    message), how many Hellos the broker acknowledged, and stops."""
    fleet = Fleet(ids, ports, sources)
    fleet.start()
    while not fleet.connected.wait(0.5):
        if fleet.error or not fleet.is_alive():
            conn.send(("error", fleet.error or "the fleet's loop stopped"))
            return
    conn.send(("connected", fleet.connect_seconds))
    conn.recv()
    conn.send(("acked", sum(d.hello_acked for d in fleet.devices), fleet.dropped))
    fleet.stop_event.set()
    fleet.join(timeout=60)


class ProcessFleet:
    """The devices ``ids`` spread over ``processes`` simulator processes (each a
    :class:`Fleet` holding its share of the sockets), device ``i`` on broker port
    ``ports[i % len(ports)]``. Surge only: no telemetry."""

    def __init__(self, ids: list[str], ports: list[int], processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of this process's threads
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs = []
        for k in range(processes):
            mine = list(range(k, len(ids), processes))
            parent, child = ctx.Pipe()
            self.conns.append(parent)
            self.procs.append(ctx.Process(
                target=_fleet_process, daemon=True,
                args=([ids[i] for i in mine], [ports[i % len(ports)] for i in mine],
                      [source_address(i) for i in mine], child)))
        self._connect: list[float] = []
        self.connect_seconds = 0.0
        """The slowest process's connect time, once :meth:`wait_connected` returned."""

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def wait_connected(self) -> None:
        """Wait until every process reported its connect time (:attr:`connect_seconds`).

        Raises:
            RuntimeError: a simulator process failed (its error is in the message).
        """
        while len(self._connect) < len(self.conns):
            kind, value = self.conns[len(self._connect)].recv()
            if kind != "connected":
                raise RuntimeError(f"a simulator process failed: {value}")
            self._connect.append(value)
        self.connect_seconds = max(self._connect)

    def stop(self) -> tuple[int, int]:
        """Stops every process; returns how many Hellos the broker acknowledged and how
        many connections it closed."""
        self.wait_connected()  # each process reports its connect time first
        acked = dropped = 0
        for c in self.conns:
            c.send("stop")
        for c in self.conns:
            _, a, dr = c.recv()
            acked, dropped = acked + a, dropped + dr
        for p in self.procs:
            p.join(timeout=60)
        return acked, dropped


@dataclass
class RateResult:
    rate: float
    sent: int
    seconds: float
    cpu_percent: float
    lag_median_s: float
    lag_max_s: float
    drain_s: float | None
    never_arrived: int


@dataclass
class FleetResult:
    devices: int
    connect_seconds: float
    visible_seconds: float | None
    missing_after_surge: int
    idle_cpu_percent: float
    announced: int
    """Devices whose Hello the broker acknowledged (PUBACK)."""
    rates: list[RateResult] = field(default_factory=list)


def devices_visible(server: Server, http: httpx.Client) -> set[str]:
    """Ids of the devices ``GET /v1/devices`` lists with their Hello, whatever their state
    (the simulated devices send nothing between the surge and the telemetry phases, so
    the first ones may be ``lost`` — silent longer than ``offlineAfter`` — before the
    last ones connect)."""
    out: set[str] = set()
    params: dict[str, Any] = {"limit": 5000}  # the API's largest page; follow ``next``
    while True:
        page = http.get(f"{server.url}/v1/devices", headers=server.headers,
                        params=params).json()
        out |= {d["deviceId"] for d in page["items"] if d.get("hello")}
        if not page.get("next"):
            return out
        params["cursor"] = page["next"]


def devices_listed(server: Server, http: httpx.Client) -> int:
    """How many devices ``GET /v1/devices`` lists (its ``total``, from a page of one: the
    surge's frequent check, which must not load the server with serialising the fleet)."""
    page = http.get(f"{server.url}/v1/devices", headers=server.headers,
                    params={"limit": 1}).json()
    return int(page["total"])


def telemetry_seen(server: Server, http: httpx.Client) -> dict[str, float]:
    """Device name → latest telemetry timestamp the server exports (Unix s)."""
    m = server.metrics(http).get("continuum_device_telemetry_timestamp_seconds", {})
    return {dict(k)["device"]: v for k, v in m.items()}


def lag_now(fleet: Fleet, seen: dict[str, float], at: float) -> tuple[float, int]:
    """(largest age over devices of the oldest message the server has not yet taken in,
    devices behind); drops from each device's record what the server already has."""
    worst, behind = 0.0, 0
    with fleet.lock:
        for d in fleet.devices:
            ts = seen.get(d.id, float("-inf"))
            while d.sent and d.sent[0] <= ts + 1e-5:
                d.sent.popleft()
            if d.sent and d.sent[0] < at:
                behind += 1
                worst = max(worst, at - d.sent[0])
    return worst, behind


def measure_rate(server: Server, fleet: Fleet, http: httpx.Client, rate: float,
                 seconds: float, drain_timeout: float) -> RateResult:
    for d in fleet.devices:
        d.sent.clear()
    if fleet.error:
        raise RuntimeError(f"the simulated fleet stopped: {fleet.error}")
    sent0, cpu0, t0 = fleet.sent, server.cpu_seconds(), time.monotonic()
    fleet.rate = rate
    lags = []
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        at = time.time()
        lags.append(lag_now(fleet, telemetry_seen(server, http), at)[0])
    fleet.rate = 0
    took = time.monotonic() - t0
    cpu = (server.cpu_seconds() - cpu0) / took * 100
    sent = fleet.sent - sent0
    t_end = time.monotonic()
    drain: float | None = None
    behind = 0
    while time.monotonic() - t_end < drain_timeout:
        _, behind = lag_now(fleet, telemetry_seen(server, http), float("inf"))
        if behind == 0:
            drain = time.monotonic() - t_end
            break
        time.sleep(0.5)
    return RateResult(rate=rate, sent=sent, seconds=took, cpu_percent=cpu,
                      lag_median_s=statistics.median(lags) if lags else float("nan"),
                      lag_max_s=max(lags) if lags else float("nan"), drain_s=drain,
                      never_arrived=behind)


def run(devices: int, rates: list[float], *, seconds: float = 20.0,
        surge_timeout: float = 60.0, busy_tasks: int = 0, drain_timeout: float = 30.0,
        edge_brokers: int = 0, sim_processes: int = 1) -> FleetResult:
    """All three phases on a fresh Mosquitto and control plane; see the module docstring.

    ``edge_brokers``: Mosquittos bridged to the control plane's that the devices connect
    to in turn (0: the devices connect to the control plane's broker);
    ``sim_processes``: simulator processes (above 1, ``rates`` must be empty).

    Raises:
        ValueError: ``rates`` given with more than one simulator process.
    """
    if sim_processes > 1 and rates:
        raise ValueError("telemetry rates need the fleet in one process (--sim-processes 1)")
    with tempfile.TemporaryDirectory(prefix="continuum-fleet-") as tmp:
        work = Path(tmp)
        port = free_port()
        brokers = [work / "mosquitto"]
        subprocess.run(["bash", str(MOSQUITTO_SH), "start", str(brokers[0]), str(port)],
                       check=True)
        ports = [port]
        server = None
        fleet: Fleet | ProcessFleet | None = None
        try:
            if edge_brokers:
                ports = []
                for k in range(edge_brokers):
                    brokers.append(work / f"edge-{k}")
                    ports.append(free_port())
                    subprocess.run(["bash", str(MOSQUITTO_SH), "start", str(brokers[-1]),
                                    str(ports[-1])], check=True,
                                   env={**os.environ, "MOSQUITTO_BRIDGE": f"127.0.0.1:{port}"})
            fed = sim_federation(1000, 1) if busy_tasks else sim_federation(1, 1)
            fed["spec"]["sites"].append({"name": "fleet", "kind": "devices", "tier": "device",
                                         "location": "dc",
                                         "config": {"broker": f"mqtt://127.0.0.1:{port}"}})
            ids = device_ids(devices)
            fleet = (ProcessFleet(ids, ports, sim_processes) if sim_processes > 1
                     else Fleet(ids, ports))
            server = Server(work, fed)
            http = httpx.Client(timeout=60)
            t0 = time.monotonic()
            fleet.start()
            visible: float | None = None
            names = set(ids)
            seen: set[str] = set()
            said = t0
            while time.monotonic() - t0 < surge_timeout:
                listed = devices_listed(server, http)
                if time.monotonic() - said >= 10:
                    said = time.monotonic()
                    print(f"fleet={devices}: {listed} listed after {said - t0:.0f} s",
                          flush=True)
                if listed >= devices:  # then check every Hello
                    seen = devices_visible(server, http) & names
                    if len(seen) == devices:
                        visible = time.monotonic() - t0
                        break
                time.sleep(0.5)
            else:
                seen = devices_visible(server, http) & names
            if isinstance(fleet, ProcessFleet):
                fleet.wait_connected()
            print(f"fleet={devices}: connected in {fleet.connect_seconds:.1f} s, "
                  f"{len(seen)}/{devices} visible"
                  + (f" after {visible:.1f} s" if visible is not None else
                     f" after {surge_timeout:.0f} s"), flush=True)
            cpu0, t1 = server.cpu_seconds(), time.monotonic()
            while time.monotonic() - t1 < seconds:  # the same scrapes as a telemetry phase
                time.sleep(1)
                telemetry_seen(server, http)
            idle = (server.cpu_seconds() - cpu0) / (time.monotonic() - t1) * 100
            if isinstance(fleet, ProcessFleet):
                acked, dropped = fleet.stop()
            else:
                acked, dropped = sum(d.hello_acked for d in fleet.devices), fleet.dropped
            if dropped:
                print(f"fleet={devices}: the brokers closed {dropped} simulated devices' "
                      "connections (not reconnected)", flush=True)
            out = FleetResult(devices, fleet.connect_seconds, visible, devices - len(seen),
                              idle, acked)
            busy: threading.Thread | None = None
            if busy_tasks:
                assert server is not None
                srv = server
                busy = threading.Thread(target=lambda: asyncio.run(submit_all(
                    srv.url, srv.headers, busy_tasks // 10, 4)), daemon=True)
                busy.start()
            for rate in rates:
                assert isinstance(fleet, Fleet)
                r = measure_rate(server, fleet, http, rate, seconds, drain_timeout)
                print(f"fleet={devices} rate={rate:g}/s: sent {r.sent}, server CPU "
                      f"{r.cpu_percent:.0f} %, lag median {r.lag_median_s:.2f} s max "
                      f"{r.lag_max_s:.2f} s, never arrived {r.never_arrived}", flush=True)
                out.rates.append(r)
            http.close()
            return out
        finally:
            if isinstance(fleet, Fleet):
                fleet.stop_event.set()
                if fleet.is_alive():
                    fleet.join(timeout=30)
            elif fleet is not None:
                for proc in fleet.procs:
                    proc.kill()
            if server is not None:
                server.stop()
            for b in reversed(brokers):
                subprocess.run(["bash", str(MOSQUITTO_SH), "stop", str(b)], check=False)


def table(results: list[FleetResult], busy_tasks: int = 0) -> str:
    """The fleet tables in markdown: the surge, then telemetry rate vs CPU and lag."""
    rows = ["| devices | connect (s) | all visible after (s) | never visible "
            "| Hellos the broker acked | server CPU idle (% of a core) |",
            "|---:|---:|---:|---:|---:|---:|"]
    for f in results:
        vis = f"{f.visible_seconds:.1f}" if f.visible_seconds is not None else "—"
        rows.append(f"| {f.devices:,} | {f.connect_seconds:.1f} | {vis} "
                    f"| {f.missing_after_surge} | {f.announced} | {f.idle_cpu_percent:.1f} |")
    busy = f" with the reconciler busy ({busy_tasks:,} live tasks submitted)" if busy_tasks else ""
    rows += ["", f"Telemetry{busy}:", "",
             "| devices | msgs/s asked | msgs/s sent | server CPU (% of a core) "
             "| µs CPU per msg | lag median (s) | lag max (s) | drain (s) | never arrived |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in results:
        for r in f.rates:
            sent_rate = r.sent / r.seconds if r.seconds else 0.0
            per = ((r.cpu_percent - f.idle_cpu_percent) / 100 / sent_rate * 1e6
                   if sent_rate else float("nan"))
            drain = f"{r.drain_s:.1f}" if r.drain_s is not None else "—"
            rows.append(f"| {f.devices:,} | {r.rate:,.0f} | {sent_rate:,.0f} "
                        f"| {r.cpu_percent:.0f} | {per:.0f} | {r.lag_median_s:.2f} "
                        f"| {r.lag_max_s:.2f} | {drain} | {r.never_arrived} |")
    return "\n".join(rows)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--devices", type=int, nargs="+", default=[1000],
                    help="fleet sizes, each on a fresh broker and server (default: 1000)")
    ap.add_argument("--rates", type=float, nargs="*", default=[1000, 5000],
                    help="telemetry msgs/s in all (default: 1000 5000; none: the surge and "
                         "idle phases only). Lag needs per-device series on /metrics, "
                         "exported up to the server's device_series_limit (10,000) devices")
    ap.add_argument("--fleet-seconds", type=float, default=20.0,
                    help="length of the idle and of each telemetry phase (default 20)")
    ap.add_argument("--surge-timeout", type=float, default=60.0,
                    help="seconds to wait for every device to be visible (default 60)")
    ap.add_argument("--busy-tasks", type=int, default=0,
                    help="live tasks submitted during the telemetry phases (default 0)")
    ap.add_argument("--edge-brokers", type=int, default=0,
                    help="Mosquittos bridged to the control plane's that the devices "
                         "connect to in turn (default 0: the devices connect to it "
                         "directly); each broker holds at most `ulimit -n` connections")
    ap.add_argument("--sim-processes", type=int, default=1,
                    help="simulator processes sharing the devices (default 1; above 1 "
                         "the surge and idle phases only: give --rates no value)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    if args.sim_processes > 1 and args.rates:
        ap.error("--sim-processes above 1 runs the surge only: give --rates no value")
    results = [run(n, args.rates, seconds=args.fleet_seconds,
                   surge_timeout=args.surge_timeout, busy_tasks=args.busy_tasks,
                   edge_brokers=args.edge_brokers, sim_processes=args.sim_processes)
               for n in args.devices]
    print()
    print(table(results, args.busy_tasks))
    return 0 if all(f.missing_after_surge == 0 for f in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
