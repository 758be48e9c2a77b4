"""A device that went silent: its state, its site's health, and forgetting it.

Against a real Mosquitto (a private one, so no other test's retained devices count):
a device whose status says online but that stopped talking is ``lost`` (not
``online``), keeps its site Degraded, and is forgotten by ``DevicesAdapter.forget`` —
its retained hello/status cleared, so a fresh adapter does not learn it again; an online
device or an unknown one cannot be forgotten; ``forgetAfter`` forgets it by itself; and
``DELETE /v1/devices/{site}/{device}`` plus ``continuum devices forget`` do the same
through the control plane.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from adapters.base import AdapterContext
from adapters.devices import DevicesAdapter
from continuum.errors import Conflict, NotFound
from continuum.model import SiteHealth, SiteKind, SiteSpec
from edge_agent.protocol import DevicePower, DeviceStatus, Hello, encode, topic
from tests.conftest import Mosquitto
from tests.helpers import NoArtifacts, Wakes, admin_headers, wait_for


@pytest.fixture
def broker(own_broker: Mosquitto) -> Mosquitto:
    return own_broker


class FakeDevice:
    """An MQTT client that announces a device (retained hello + online status) and
    then says nothing more unless told to."""

    def __init__(self, broker: Mosquitto, device_id: str) -> None:
        self.device_id = device_id
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def announce(self) -> None:
        hello = Hello(device_id=self.device_id, hostname=self.device_id, arch="aarch64",
                      cpus=4, memory=2**30, location="lab-1",
                      power=DevicePower(idle_watts=2.7, max_watts=6.4), agent_version="test")
        for leaf, payload in (("hello", hello),
                              ("status", DeviceStatus(device_id=self.device_id, state="online"))):
            self.client.publish(topic(self.device_id, leaf), encode(payload), qos=1,
                                retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def adapter(broker: Mosquitto, tmp: Path, clock: Any, **config: Any) -> DevicesAdapter:
    site = SiteSpec(name="fleet", kind=SiteKind.devices,
                    config={"broker": broker.url, "offlineAfter": 5, **config})
    a = DevicesAdapter(site, AdapterContext(artifacts=NoArtifacts(), state_dir=tmp,
                                            wake=Wakes(), clock=clock))
    wait_for(lambda: a.connected, 10, message="adapter connected")
    return a


def entry(a: DevicesAdapter, device_id: str) -> dict[str, Any] | None:
    return next((d for d in a.devices() if d["deviceId"] == device_id), None)


def test_a_silent_device_is_lost_and_can_be_forgotten(broker: Mosquitto, tmp_path: Path) -> None:
    now = [1_000.0]
    a = adapter(broker, tmp_path, lambda: now[0])
    dev = FakeDevice(broker, "d1")
    try:
        assert a.health() == (SiteHealth.Ready, "no device enrolled yet")
        dev.announce()
        wait_for(lambda: (e := entry(a, "d1")) is not None and e["online"], 10,
                 message="d1 online")
        assert entry(a, "d1")["state"] == "online"  # type: ignore[index]
        with pytest.raises(Conflict, match="online"):
            a.forget("d1")
        now[0] += 6  # silent for longer than offlineAfter
        e = entry(a, "d1")
        assert e is not None and (e["online"], e["state"]) == (False, "lost")
        health, message = a.health()
        assert health == SiteHealth.Degraded and "DELETE /v1/devices/fleet/<device>" in message
        a.forget("d1")
        assert entry(a, "d1") is None and a.inventory() == []
        assert a.health() == (SiteHealth.Ready, "no device enrolled yet")
        with pytest.raises(NotFound):
            a.forget("d1")
        # the retained hello and status are gone from the broker: a new adapter sees nothing
        fresh = adapter(broker, tmp_path, lambda: now[0])
        try:
            probe = FakeDevice(broker, "probe")
            probe.announce()  # a retained message published after d1's were cleared
            wait_for(lambda: entry(fresh, "probe") is not None, 10, message="probe seen")
            assert entry(fresh, "d1") is None
            probe.close()
        finally:
            fresh.close()
    finally:
        dev.close()
        a.close()


def test_forget_after_forgets_by_itself(broker: Mosquitto, tmp_path: Path) -> None:
    now = [1_000.0]
    a = adapter(broker, tmp_path, lambda: now[0], forgetAfter=60)
    dev = FakeDevice(broker, "d2")
    try:
        dev.announce()
        wait_for(lambda: any(n.name == "d2" for n in a.inventory()), 10, message="d2 known")
        now[0] += 30
        assert [n.ready for n in a.inventory()] == [False]  # offline, not forgotten yet
        now[0] += 31
        assert a.inventory() == [] and a.health()[0] == SiteHealth.Ready
    finally:
        dev.close()
        a.close()


def test_delete_route_and_cli_forget_a_device(broker: Mosquitto, tmp_path: Path) -> None:
    from control_plane import cli
    from tests.control_plane.harness import served

    device_id = f"gone-{uuid.uuid4().hex[:6]}"
    with served(tmp_path / "state") as url:
        h = admin_headers(tmp_path / "state")
        import httpx

        site = {"name": "lab", "kind": "devices", "tier": "device", "location": "dc",
                "config": {"broker": broker.url, "offlineAfter": 1}}
        assert httpx.post(f"{url}/v1/sites", headers=h, json=site).status_code == 201
        dev = FakeDevice(broker, device_id)
        dev.announce()
        dev.close()  # silent from here on (no last will: its status still says online)

        def state() -> str | None:
            items = httpx.get(f"{url}/v1/devices", headers=h).json()["items"]
            return next((d["state"] for d in items if d["deviceId"] == device_id), None)

        wait_for(lambda: state() == "lost", 15, message=lambda: f"lost, now {state()}")
        wait_for(lambda: httpx.get(f"{url}/v1/sites/lab", headers=h).json()["health"] == "Degraded", 15,
                 message="site Degraded")
        r = httpx.delete(f"{url}/v1/devices/lab/nobody", headers=h)
        assert r.status_code == 404 and "nobody" in r.text
        assert httpx.delete(f"{url}/v1/devices/cloud/x", headers=h).status_code == 404  # a sim site
        out = CliRunner().invoke(cli.app, ["devices", "forget", "lab", device_id, "--url", url])
        assert out.exit_code == 0, out.output
        assert f"device {device_id} of site lab forgotten; site health now Ready" in out.output
        assert state() is None
        wait_for(lambda: httpx.get(f"{url}/v1/sites/lab", headers=h).json()["health"] == "Ready", 15,
                 message="site Ready again")
