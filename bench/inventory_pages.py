"""What one page of ``GET /v1/devices`` costs at a fleet size (issue 16 item 3).

Starts a private Mosquitto (``deploy/dev/mosquitto.sh``) and an in-process control plane
served over HTTP (the test harness's ``served``, one ``devices`` site on that broker),
announces ``--devices`` simulated devices (retained hello and online status, one
telemetry message each, published from one MQTT client), waits until the API lists them
all, then times (median of ``--repeat``) one page of 500, one of 5,000, a filtered page
that matches nothing, the Python client listing everything in pages of 500 and of 5,000,
and ``continuum get devices -o json`` to a pipe. Prints one line per figure.

Reproduce (from the repository root; about a minute on 2 cores at 5,000 devices)::

    .venv/bin/python -m bench.inventory_pages --devices 5000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from typer.testing import CliRunner

from control_plane import cli
from control_plane.client import Client
from edge_agent.protocol import DevicePower, DeviceStatus, Hello, Telemetry, encode, topic
from tests.conftest import Mosquitto, free_port
from tests.control_plane.harness import served
from tests.helpers import admin_headers, wait_for


def announce(port: int, n: int) -> None:
    """Retained hello + online status and one telemetry message for devices d000000…"""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-announcer")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    last = None
    for i in range(n):
        d = f"d{i:06d}"
        hello = Hello(device_id=d, hostname=d, arch="aarch64", cpus=4, memory=2**30,
                      location="lab-1", agent_version="bench",
                      power=DevicePower(idle_watts=2.7, max_watts=6.4))
        tel = Telemetry(device_id=d, cpu_percent=10, memory_used=2**28, memory_total=2**30,
                        load1=0.1, power_watts=3.0, power_source="model")
        for leaf, payload in (("hello", hello), ("status", DeviceStatus(device_id=d, state="online")),
                              ("telemetry", tel)):
            last = c.publish(topic(d, leaf), encode(payload), qos=1, retain=leaf != "telemetry")
    if last is not None:
        last.wait_for_publish(120)
    c.loop_stop()
    c.disconnect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="inventory-pages-"))
    broker = Mosquitto(dir=tmp / "broker", port=free_port())
    broker.dir.mkdir()
    broker.start()
    try:
        with served(tmp / "state") as url:
            h = admin_headers(tmp / "state")
            site = {"name": "lab", "kind": "devices", "tier": "device", "location": "dc",
                    "config": {"broker": broker.url, "offlineAfter": 3600}}
            httpx.post(f"{url}/v1/sites", headers=h, json=site).raise_for_status()
            announce(broker.port, args.devices)

            def get(params: dict[str, Any]) -> httpx.Response:
                r = httpx.get(f"{url}/v1/devices", headers=h, params=params, timeout=300)
                r.raise_for_status()
                return r

            wait_for(lambda: get({"limit": 1}).json()["total"] == args.devices, 300,
                     message="every device listed")
            print(f"devices: {args.devices}")
            pages: list[dict[str, Any]] = [{"limit": 500}, {"limit": 5000},
                                           {"limit": 500, "state": "offline"}]
            for params in pages:
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    size = len(get(params).content)
                    times.append(time.perf_counter() - t)
                print(f"GET /v1/devices {params}: median {statistics.median(times) * 1000:.0f} ms, "
                      f"{size} bytes")
            for page in (500, 5000):
                t = time.perf_counter()
                n = len(Client(url, timeout=300).devices(page_size=page)["items"])
                print(f"Client.devices(page_size={page}): {time.perf_counter() - t:.2f} s, {n} devices")
            t = time.perf_counter()
            out = CliRunner().invoke(cli.app, ["get", "devices", "--url", url, "-o", "json"])
            print(f"continuum get devices -o json (to a pipe): {time.perf_counter() - t:.2f} s, "
                  f"exit {out.exit_code}")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
