"""``GET /v1/nodes`` and ``GET /v1/devices`` a page at a time (issue 16 item 3).

Aspects: following ``next`` from the first page to the last lists every node (and every
device) exactly once, in id order, with ``total`` the count of matches; a page taken
before new items appear continues without repeating or skipping (a keyset cursor, not
an offset); the filters (nodes: site, tier, ready, name prefix; devices: site, state,
id prefix) narrow the list server-side; a bad ``limit``, ``cursor``, ``tier`` or
``state`` is a 422 naming the field; the Python client and ``continuum get nodes`` /
``get devices`` follow ``next`` and honour ``--limit``. Devices are real announcements
(retained hello and status) on a private Mosquitto.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from control_plane.client import Client
from edge_agent.protocol import DevicePower, DeviceStatus, Hello, encode, topic
from tests.conftest import Mosquitto
from tests.control_plane.harness import control_plane, served
from tests.helpers import admin_headers, wait_for


def sim_site(name: str, tier: str, groups: dict[str, int]) -> dict[str, Any]:
    return {"name": name, "kind": "sim", "tier": tier, "location": "dc", "config": {
        "nodes": [{"name": g, "count": n, "cpu": 4, "memory": "8Gi",
                   "power": {"idleWatts": 10, "maxWatts": 40}} for g, n in groups.items()]}}


def walk(get: Any, path: str, **params: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """Every item of ``path`` following ``next``; also each page's length."""
    items: list[dict[str, Any]] = []
    sizes: list[int] = []
    cursor = None
    while True:
        r = get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        sizes.append(len(page["items"]))
        cursor = page["next"]
        if cursor is None:
            return items, sizes


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    with control_plane(tmp_path, database_url=database_url) as (_, client):
        r = client.post("/v1/sites", json=sim_site("hpc", "hpc", {"cpu": 11, "gpu": 3}))
        assert r.status_code == 201, r.text
        yield client


def test_every_node_exactly_once_across_pages(api: TestClient) -> None:
    whole = api.get("/v1/nodes").json()
    ids = [n["id"] for n in whole["items"]]
    assert len(ids) == 16 and ids == sorted(ids)  # 2 cloud + 14 hpc, in id order
    assert (whole["next"], whole["total"], whole["limit"]) == (None, 16, 500)
    items, sizes = walk(api.get, "/v1/nodes", limit=5)
    assert [n["id"] for n in items] == ids and sizes == [5, 5, 5, 1]
    first = api.get("/v1/nodes", params={"limit": 5}).json()
    assert first["total"] == 16 and first["next"] is not None
    assert api.get("/v1/nodes", params={"limit": 16}).json()["next"] is None  # exactly full


def test_a_cursor_continues_after_new_nodes_appear(api: TestClient) -> None:
    first = api.get("/v1/nodes", params={"limit": 4}).json()  # cloud/vm-0, vm-1, hpc/cpu-0, -1
    seen = [n["id"] for n in first["items"]]
    # nodes sorting before the cursor and after it arrive between the two requests
    for site in (sim_site("aaa", "edge", {"box": 3}), sim_site("zzz", "edge", {"box": 2})):
        assert api.post("/v1/sites", json=site).status_code == 201
    rest, _ = walk(api.get, "/v1/nodes", limit=4, cursor=first["next"])
    after = [n["id"] for n in rest]
    assert not set(seen) & set(after)  # nothing repeated (an offset would repeat 3)
    everything = [n["id"] for n in api.get("/v1/nodes").json()["items"]]
    assert seen + after == [i for i in everything if not i.startswith("aaa/")]


@pytest.mark.parametrize(("params", "expect"), [
    ({"site": "cloud"}, ["cloud/vm-0", "cloud/vm-1"]),
    ({"tier": "hpc", "prefix": "gpu"}, ["hpc/gpu-0", "hpc/gpu-1", "hpc/gpu-2"]),
    ({"prefix": "cpu-1", "limit": 1}, ["hpc/cpu-1", "hpc/cpu-10"]),
    ({"ready": "false"}, []),
    ({"ready": "true", "site": "hpc", "tier": "cloud"}, []),
])
def test_node_filters(api: TestClient, params: dict[str, Any], expect: list[str]) -> None:
    items, _ = walk(api.get, "/v1/nodes", **params)
    assert [n["id"] for n in items] == expect
    assert api.get("/v1/nodes", params=params).json()["total"] == len(expect)


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


@pytest.mark.parametrize(("path", "params", "field", "needle"), [
    ("/v1/nodes", {"limit": 0}, "limit", "greater than or equal to 1"),
    ("/v1/nodes", {"limit": 5001}, "limit", "less than or equal to 5000"),
    ("/v1/nodes", {"limit": "many"}, "limit", "valid integer"),
    ("/v1/nodes", {"cursor": "not base64!"}, "cursor", "the `next` of the previous page"),
    ("/v1/nodes", {"cursor": _cursor(b"[1, 2]")}, "cursor", "not a cursor"),
    ("/v1/nodes", {"cursor": _cursor(b'{"after": 7}')}, "cursor", "not a cursor"),
    ("/v1/nodes", {"cursor": _cursor(b"[" * 1500)}, "cursor", "not a cursor"),
    ("/v1/nodes", {"cursor": "é"}, "cursor", "not a cursor"),
    ("/v1/nodes", {"cursor": "a" * 2049}, "cursor", "at most 2048 characters"),
    ("/v1/nodes", {"tier": "mainframe"}, "tier", "Input should be"),
    ("/v1/nodes", {"ready": "perhaps"}, "ready", "valid boolean"),
    ("/v1/devices", {"limit": -3}, "limit", "greater than or equal to 1"),
    ("/v1/devices", {"state": "asleep"}, "state", "'online'"),
    ("/v1/devices", {"cursor": "%%%"}, "cursor", "not a cursor"),
])
def test_bad_paging_or_filter_is_a_422_naming_the_field(
        api: TestClient, path: str, params: dict[str, Any], field: str, needle: str) -> None:
    r = api.get(path, params=params)
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["query", field] and needle in problem["msg"], problem


def test_client_and_cli_follow_next(tmp_path: Path) -> None:
    from control_plane import cli

    with served(tmp_path / "state") as url:
        c = Client(url)
        c.register_site(sim_site("hpc", "hpc", {"cpu": 7}))
        every = c.nodes(page_size=2)  # 5 requests
        ids = [n["id"] for n in every["items"]]
        assert len(ids) == 9 and ids == sorted(ids) and every["next"] is None
        assert every["total"] == 9
        some = c.nodes(limit=3, page_size=2)  # 2 requests: 2 + 1
        assert [n["id"] for n in some["items"]] == ids[:3] and some["next"] is not None
        assert [n["id"] for n in c.nodes(site="hpc", prefix="cpu-6")["items"]] == ["hpc/cpu-6"]
        runner = CliRunner()
        out = runner.invoke(cli.app, ["get", "nodes", "--url", url, "-o", "json"])
        assert out.exit_code == 0, out.output
        assert [n["id"] for n in json.loads(out.output)["items"]] == ids
        out = runner.invoke(cli.app, ["get", "nodes", "--url", url, "--limit", "4",
                                      "--tier", "hpc"])
        assert out.exit_code == 0, out.output
        assert "hpc/cpu-0" in out.output and "hpc/cpu-4" not in out.output
        assert "4 of 7 shown (raise --limit for more)" in out.output
        out = runner.invoke(cli.app, ["get", "nodes", "--url", url, "--limit", "0"])
        assert out.exit_code != 0 and "--limit" in out.output


# ------------------------------------------------------------------ devices


@pytest.fixture
def broker(own_broker: Mosquitto) -> Mosquitto:
    return own_broker


def announce(broker: Mosquitto, devices: dict[str, str]) -> None:
    """Retained hello and status (``online`` or ``offline``) for each device id, as an
    agent publishes them."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="announcer")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for device_id, state in devices.items():
            hello = Hello(device_id=device_id, hostname=device_id, arch="aarch64", cpus=4,
                          memory=2**30, location="lab-1", agent_version="test",
                          power=DevicePower(idle_watts=2.7, max_watts=6.4))
            status = DeviceStatus(device_id=device_id, state=state)  # type: ignore[arg-type]
            for leaf, payload in (("hello", hello), ("status", status)):
                client.publish(topic(device_id, leaf), encode(payload), qos=1,
                               retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def test_devices_pages_and_filters(broker: Mosquitto, tmp_path: Path) -> None:
    from control_plane import cli

    fleet = {f"cam-{i}": "online" for i in range(5)} | {f"pi-{i}": "offline" for i in range(3)}
    with served(tmp_path / "state") as url:
        h = admin_headers(tmp_path / "state")
        site = {"name": "lab", "kind": "devices", "tier": "device", "location": "dc",
                "config": {"broker": broker.url, "offlineAfter": 60}}
        assert httpx.post(f"{url}/v1/sites", headers=h, json=site).status_code == 201
        announce(broker, fleet)

        def get(path: str, params: dict[str, Any]) -> httpx.Response:
            return httpx.get(f"{url}{path}", headers=h, params=params)

        wait_for(lambda: get("/v1/devices", {}).json()["total"] == 8, 15,
                 message=lambda: f"8 devices, now {get('/v1/devices', {}).json()['total']}")
        items, sizes = walk(get, "/v1/devices", limit=3)
        assert [d["deviceId"] for d in items] == sorted(fleet) and sizes == [3, 3, 2]
        assert {d["deviceId"]: d["state"] for d in items} == fleet
        offline, _ = walk(get, "/v1/devices", state="offline", limit=2)
        assert [d["deviceId"] for d in offline] == ["pi-0", "pi-1", "pi-2"]
        assert [d["deviceId"] for d in walk(get, "/v1/devices", prefix="cam-3", site="lab")[0]
                ] == ["cam-3"]
        assert get("/v1/devices", {"site": "cloud"}).json() == {
            "items": [], "next": None, "total": 0, "limit": 500}
        assert get("/v1/devices", {"state": "lost"}).json()["total"] == 0
        assert [d["deviceId"] for d in Client(url).devices(state="online", page_size=2)[
            "items"]] == [f"cam-{i}" for i in range(5)]
        out = CliRunner().invoke(cli.app, ["get", "devices", "--url", url, "--state",
                                           "offline", "-o", "json"])
        assert out.exit_code == 0, out.output
        assert [d["deviceId"] for d in json.loads(out.output)["items"]] == ["pi-0", "pi-1", "pi-2"]
