"""Devices enrol; the broker enforces identity; updates are believed only from their source
(issue 12, items 4, 6 and the broker part of 9).

Against a real Mosquitto in secured mode (``deploy/dev/mosquitto.sh``: TLS with a CA and
certificate from ``continuum pki init``, the password file and pattern ACL the control
plane writes, reloaded with SIGHUP) and a served control plane:

* enrol (``continuum-agent enroll``) → the agent connects over TLS with its own
  credentials and runs a task; replayed, expired and unknown enrolment tokens are refused;
* a wrong password and an anonymous client are refused; a revoked device is disconnected
  at once and refused from then on;
* the cross-topic attack: device B publishing on device A's topics arrives nowhere (the
  broker drops ACL denials silently, so we assert what a subscriber receives), and B
  cannot read A's commands.

Against the plain test broker (the second layer, the adapter): a run update for run R on
the topic of a device R is not placed on is dropped and counted (it used to cancel the
real run), and with ``requireEnrollment`` a hello from a device that is not enrolled never
becomes a node.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from adapters.base import AdapterContext, Handle, TaskRun
from adapters.devices import DevicesAdapter
from continuum.federation import FederationDocument
from continuum.model import SiteKind, SiteSpec, Task
from control_plane.enrollment import acl_text, mosquitto_hash
from control_plane.pki import init_pki
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from edge_agent.protocol import RunUpdate, encode, topic
from tests.conftest import MOSQUITTO_SH, REPO, AgentFactory, Mosquitto, free_port
from tests.helpers import TEST_COMMAND_KEY, MqttProbe, NoArtifacts, Wakes, gate_source, open_gate, wait_for
from tests.monitoring.test_prometheus_scrape import Served

PY = sys.executable
CONTROL_USER = "continuum"


# ---------------------------------------------------------------- secured broker + control plane


@dataclass
class SecuredBroker:
    """Mosquitto with TLS (``continuum pki init``), a password file and an ACL."""

    dir: Path
    port: int
    ca: Path
    password_file: Path
    acl_file: Path
    control_password: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.dir / "mosquitto.pid"

    def log(self) -> str:
        return (self.dir / "mosquitto.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    tmp = tmp_path_factory.mktemp("secured")
    pki = init_pki(tmp / "pki", ["localhost", "127.0.0.1"])
    b = SecuredBroker(dir=tmp / "broker", port=free_port(), ca=pki.ca_cert,
                      password_file=tmp / "passwd", acl_file=tmp / "acl")
    # the operator's own line (the control plane's user); the control plane keeps it
    b.password_file.write_text(f"{CONTROL_USER}:{mosquitto_hash(b.control_password)}\n")
    b.acl_file.write_text(acl_text(CONTROL_USER))
    r = subprocess.run([str(MOSQUITTO_SH), "start", str(b.dir), str(b.port),
                        str(b.password_file), str(b.acl_file), str(pki.server_cert),
                        str(pki.server_key)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.fail(f"secured Mosquitto did not start: {r.stderr}")
    yield b
    subprocess.run([str(MOSQUITTO_SH), "stop", str(b.dir)], capture_output=True, timeout=30,
                   check=False)


def fleet(b: SecuredBroker) -> FederationDocument:
    return FederationDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "trust"},
        "spec": {
            "controlPlane": {"location": "factory"},
            "locations": [{"name": "factory", "lat": 48.1, "lon": 11.6}],
            "sites": [{"name": "fleet", "kind": "devices", "tier": "device",
                       "location": "factory",
                       "config": {"broker": b.url, "username": CONTROL_USER,
                                  "password": b.control_password, "tlsCa": str(b.ca),
                                  "requireEnrollment": True, "offlineAfter": 5}}],
        },
    })


@pytest.fixture(scope="module")
def served(secured: SecuredBroker, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("cp")
    port = free_port()
    settings = Settings(state_dir=tmp / "state", port=port, reconcile_interval_s=0.1,
                        inventory_interval_s=0.2, model_retrain_interval_s=0,
                        broker_password_file=secured.password_file,
                        broker_acl_file=secured.acl_file, broker_pid_file=secured.pid_file)
    with Served(ControlPlane(settings, fleet(secured)), port) as s:
        wait_for(lambda: s.cp.federation.get_adapter("fleet").connected,  # type: ignore[union-attr]
                 20, message=lambda: f"control plane connected over TLS:\n{secured.log()}")
        yield s


def new_token(served: Served, **body: Any) -> str:
    r = httpx.post(f"{served.url}/v1/devices/enrollment-tokens", headers=served.headers,
                   json={"site": "fleet", "tenant": "lab", **body}, timeout=10)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def enroll_cli(served: Served, token: str, device_id: str, state_dir: Path
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "edge_agent.cli", "enroll", "--server", served.url, "--token", token,
         "--device-id", device_id, "--state-dir", str(state_dir)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=60)


def enroll_api(served: Served, device_id: str) -> dict[str, Any]:
    r = httpx.post(f"{served.url}/v1/devices/enroll",
                   json={"token": new_token(served), "deviceId": device_id}, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def Client(b: SecuredBroker, username: str | None, password: str | None) -> MqttProbe:  # noqa: N802
    """A client over TLS to the secured broker (see :class:`tests.helpers.MqttProbe`)."""
    return MqttProbe("127.0.0.1", b.port, username, password, ca=b.ca)


# ---------------------------------------------------------------- PKI


def test_pki_init_writes_a_ca_and_a_broker_certificate_with_private_keys_0600(
        tmp_path: Path) -> None:
    files = init_pki(tmp_path / "pki", ["broker.example.org", "10.0.0.5"])
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    with pytest.raises(ValueError, match="--force"):
        init_pki(tmp_path / "pki", ["broker.example.org"])
    again = init_pki(tmp_path / "pki", ["other.example.org"], force=True)
    assert not again.ca_created  # the operator's (or the first) CA is kept
    assert x509.load_pem_x509_certificate(files.ca_cert.read_bytes()) == ca


def test_pki_init_cli(tmp_path: Path) -> None:
    r = subprocess.run([PY, "-m", "control_plane.cli", "pki", "init", "--dir",
                        str(tmp_path / "p"), "--host", "localhost", "--host", "127.0.0.1"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "CA created" in r.stdout and (tmp_path / "p" / "broker.pem").exists()


# ---------------------------------------------------------------- enrolment (secured)


def test_enrolled_agent_connects_over_tls_and_runs_a_task(
        served: Served, secured: SecuredBroker, tmp_path: Path, run_user: pwd.struct_passwd,
        open_state_dir: Path) -> None:
    state = open_state_dir  # the task runs as the unprivileged run user (the default)
    r = enroll_cli(served, new_token(served), "dev-a", state)
    assert r.returncode == 0, r.stderr
    assert "enrolled device dev-a in site fleet" in r.stdout
    enrolled = state / "enrollment.json"
    assert stat.S_IMODE(enrolled.stat().st_mode) == 0o600
    doc = json.loads(enrolled.read_text())
    assert doc["username"] == "dev-a" and doc["brokerUrl"] == secured.url
    assert doc["caPem"] == secured.ca.read_text() and len(doc["commandKey"]) == 44
    # only the hash is on the broker's side and in the database
    assert doc["password"] not in secured.password_file.read_text()
    assert doc["password"].encode() not in (served.cp.settings.state_dir
                                            / "continuum.db").read_bytes()
    assert "dev-a:$7$101$" in secured.password_file.read_text()
    assert f"{CONTROL_USER}:$7$" in secured.password_file.read_text()  # the operator's kept
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PY, "-m", "edge_agent.cli", "run", "--state-dir", str(state),
             "--telemetry-interval", "0.5", "--reconnect-max", "1", "--location", "factory"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: any(n.name == "dev-a" and n.ready
                             for n in served.cp.federation.nodes()), 30,
                 message=lambda: f"dev-a ready over TLS; agent log:\n{log.read_text()}\n"
                 f"broker log:\n{secured.log()}")
        wf = httpx.post(f"{served.url}/v1/workflows", headers=served.headers, timeout=10, json={
            "apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": "hi"},
            "spec": {"tasks": [{"name": "hi", "command": ["sh", "-c", "echo over tls"]}]},
        })
        assert wf.status_code == 201, wf.text
        wf_id = wf.json()["id"]

        def done() -> dict[str, Any] | None:
            w = httpx.get(f"{served.url}/v1/workflows/{wf_id}", headers=served.headers, timeout=10).json()
            return w if w["state"] in ("Succeeded", "Failed") else None
        w = wait_for(done, 60, message=lambda: f"workflow done; agent log:\n{log.read_text()}")
        assert w["state"] == "Succeeded", w
        runs = httpx.get(f"{served.url}/v1/runs",
                         headers=served.headers, params={"workflow": wf_id}, timeout=10).json()
        assert [r["node"] for r in runs["items"]] == ["fleet/dev-a"]
        # revoked: the broker drops it at once and the control plane no longer places on it
        r = httpx.delete(f"{served.url}/v1/devices/fleet/dev-a/credentials",
                         headers=served.headers, timeout=10)
        assert r.status_code == 200, r.text
        wait_for(lambda: "refused the connection: Not authorized" in log.read_text(), 15,
                 message=lambda: f"the agent refused after revocation:\n{log.read_text()}")
        wait_for(lambda: "dev-a" not in [n.name for n in served.cp.federation.nodes()], 10,
                 message="the revoked device gone from the inventory")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_replayed_expired_and_unknown_tokens_are_refused(served: Served) -> None:
    token = new_token(served)
    first = httpx.post(f"{served.url}/v1/devices/enroll",
                       json={"token": token, "deviceId": "dev-replay"}, timeout=10)
    assert first.status_code == 200, first.text
    replay = httpx.post(f"{served.url}/v1/devices/enroll",
                        json={"token": token, "deviceId": "dev-replay-2"}, timeout=10)
    assert replay.status_code == 409 and "already used" in replay.json()["detail"]
    expired = new_token(served, ttlS=0.001)
    r = httpx.post(f"{served.url}/v1/devices/enroll",
                   json={"token": expired, "deviceId": "dev-late"}, timeout=10)
    assert r.status_code == 410 and "expired" in r.json()["detail"]
    r = httpx.post(f"{served.url}/v1/devices/enroll",
                   json={"token": "cet_forged", "deviceId": "dev-x"}, timeout=10)
    assert r.status_code == 401 and "not valid" in r.json()["detail"]
    # neither the refused devices nor the token's second user got credentials
    text = served.cp.settings.broker_password_file.read_text()  # type: ignore[union-attr]
    assert "dev-replay:" in text
    assert not any(f"{d}:" in text for d in ("dev-replay-2", "dev-late", "dev-x"))


def test_enrolment_input_errors_name_the_field(served: Served) -> None:
    r = httpx.post(f"{served.url}/v1/devices/enrollment-tokens", headers=served.headers,
                   json={"site": "fleet", "tenant": "Not A Tenant"}, timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "tenant"
    r = httpx.post(f"{served.url}/v1/devices/enrollment-tokens", headers=served.headers,
                   json={"site": "nowhere", "tenant": "lab"}, timeout=10)
    assert r.status_code == 404 and "nowhere" in r.json()["detail"]
    r = httpx.post(f"{served.url}/v1/devices/enroll",
                   json={"token": new_token(served), "deviceId": "a/b"}, timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "deviceId"
    # the control plane's own broker user can never be taken by a device
    r = httpx.post(f"{served.url}/v1/devices/enroll",
                   json={"token": new_token(served), "deviceId": CONTROL_USER}, timeout=10)
    assert r.status_code == 409
    r = httpx.delete(f"{served.url}/v1/devices/fleet/dev-never/credentials",
                     headers=served.headers, timeout=10)
    assert r.status_code == 404


def test_wrong_password_and_anonymous_clients_are_refused(
        served: Served, secured: SecuredBroker) -> None:
    creds = enroll_api(served, "dev-pw")
    good = Client(secured, "dev-pw", creds["password"])
    assert good.accepted, secured.log()
    good.close()
    wrong = Client(secured, "dev-pw", creds["password"] + "x")
    assert not wrong.accepted and wrong.connack[0] in ("Bad user name or password",
                                                       "Not authorized")
    wrong.close()
    anon = Client(secured, None, None)
    assert not anon.accepted
    anon.close()


def test_a_revoked_device_is_disconnected_at_once_and_refused(
        served: Served, secured: SecuredBroker) -> None:
    creds = enroll_api(served, "dev-rev")
    c = Client(secured, "dev-rev", creds["password"])
    assert c.accepted
    r = httpx.delete(f"{served.url}/v1/devices/fleet/dev-rev/credentials", headers=served.headers, timeout=10)
    assert r.status_code == 200 and r.json()["revoked"] is True
    # Mosquitto 2.0 drops a connected client whose user left the password file on SIGHUP
    assert c.disconnected.wait(10), secured.log()
    c.close()
    again = Client(secured, "dev-rev", creds["password"])
    assert not again.accepted
    again.close()
    assert "dev-rev:" not in secured.password_file.read_text()
    assert not served.cp.enrollment.is_enrolled("fleet", "dev-rev")
    # revoking twice: nothing left to revoke
    r = httpx.delete(f"{served.url}/v1/devices/fleet/dev-rev/credentials", headers=served.headers, timeout=10)
    assert r.status_code == 404


def test_a_device_cannot_publish_on_or_read_another_devices_topics(
        served: Served, secured: SecuredBroker) -> None:
    """The cross-topic attack at the broker: B's run update on A's topic arrives nowhere."""
    a_creds, b_creds = enroll_api(served, "dev-xa"), enroll_api(served, "dev-xb")
    watcher = Client(secured, CONTROL_USER, secured.control_password)
    watcher.c.subscribe("continuum/v1/devices/#", qos=1)
    wait_for(watcher.subscribed.is_set, 10, message="watcher subscribed")
    b = Client(secured, "dev-xb", b_creds["password"])
    forged = RunUpdate(run_id="r-victim", device_id="dev-xa", seq=99, state="Cancelled",
                       reason="forged")
    b.c.publish(topic("dev-xa", "runs/r-victim"), encode(forged), qos=1).wait_for_publish(5)
    b.c.publish(topic("dev-xa", "hello"), b"{}", qos=1, retain=True).wait_for_publish(5)
    b.c.publish(topic("dev-xb", "rejected"), b"{}", qos=1).wait_for_publish(5)
    own = b.c.publish(topic("dev-xb", "telemetry"), b"marker", qos=1)
    own.wait_for_publish(5)
    # B's own messages (a refusal report, then the last one) arrive; the forged ones never do
    wait_for(lambda: topic("dev-xb", "telemetry") in watcher.topics(), 10,
             message=lambda: f"B's own message at the watcher; got {watcher.topics()}")
    assert topic("dev-xb", "rejected") in watcher.topics()
    assert not [t for t in watcher.topics() if t.startswith(topic("dev-xa", ""))]
    # ...and B cannot read A's commands, only its own
    b.c.subscribe(topic("dev-xa", "commands"), qos=1)
    b.c.subscribe(topic("dev-xb", "commands"), qos=1)
    a = Client(secured, "dev-xa", a_creds["password"])  # A is a real, enrolled client
    assert a.accepted
    wait_for(b.subscribed.is_set, 10, message="B subscribed")
    watcher.c.publish(topic("dev-xa", "commands"), b"for A", qos=1).wait_for_publish(5)
    watcher.c.publish(topic("dev-xb", "commands"), b"for B", qos=1).wait_for_publish(5)
    wait_for(lambda: topic("dev-xb", "commands") in b.topics(), 10,
             message=lambda: f"B's own command; got {b.topics()}")
    assert topic("dev-xa", "commands") not in b.topics()
    for cl in (a, b, watcher):
        cl.close()


def test_an_unenrolled_hello_is_dropped_and_counted_on_metrics(
        served: Served, secured: SecuredBroker) -> None:
    """Even a hello that reaches the control plane (here published by the control user
    itself) does not make a node of a device that is not enrolled."""
    c = Client(secured, CONTROL_USER, secured.control_password)
    c.c.publish(topic("ghost", "hello"), json.dumps({
        "v": 1, "deviceId": "ghost", "cpus": 64, "memory": 2**36, "arch": "x86_64",
        "power": {"idleWatts": 0.1, "maxWatts": 0.1}}).encode(), qos=1).wait_for_publish(5)
    line = 'continuum_device_messages_dropped_total{reason="unenrolled",site="fleet"}'
    wait_for(lambda: line in httpx.get(f"{served.url}/metrics", timeout=10).text, 10,
             message="the unenrolled hello counted on /metrics")
    assert "ghost" not in [n.name for n in served.cp.federation.nodes()]
    c.c.publish(topic("ghost", "hello"), b"", qos=1, retain=True).wait_for_publish(5)
    c.close()


# ---------------------------------------------------------------- the adapter layer (plain broker)


@dataclass
class Drops:
    counts: dict[str, int] = field(default_factory=dict)

    def __call__(self, site: str, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


def plain_adapter(url: str, tmp: Path, drops: Drops, enrolled: set[str] | None = None,
                  **config: Any) -> DevicesAdapter:
    site = SiteSpec(name="fleet", kind=SiteKind.devices,
                    config={"broker": url, "offlineAfter": 10, **config})
    ctx = AdapterContext(artifacts=NoArtifacts(), state_dir=tmp, wake=Wakes(), dropped=drops,
                         device_enrolled=(lambda s, d: d in enrolled) if enrolled else None,
                         sign=TEST_COMMAND_KEY.sign)
    a = DevicesAdapter(site, ctx)
    wait_for(lambda: a.connected, 10, message="adapter connected")
    return a


def test_a_run_update_on_another_devices_topic_is_dropped(
        mosquitto: Mosquitto, agents: AgentFactory, tmp_path: Path) -> None:
    """The attack: a run update published on another device's topic cancelled the run."""
    drops = Drops()
    adapter = plain_adapter(mosquitto.url, tmp_path, drops)
    try:
        real = agents.spawn("dev-real", "--profile", "pi4")
        wait_for(lambda: any(n.name == "dev-real" and n.ready for n in adapter.inventory()),
                 20, message=lambda: f"dev-real ready:\n{real.logs()}")
        node = next(n for n in adapter.inventory() if n.name == "dev-real")
        gate = tmp_path / "gate.pid"
        run = TaskRun(run_id="r-1", workflow_id="wf", workflow_name="wf",
                      task=Task(name="t", script={"interpreter": [PY],
                                                  "source": gate_source(gate)}))
        handle = adapter.submit(run, node, "r-1")
        wait_for(lambda: (s := adapter.status([handle]).get("r-1")) and
                 s.state.value == "Running", 20, message=lambda: real.logs())
        forged = RunUpdate(run_id="r-1", device_id="dev-evil", seq=10_000, state="Cancelled",
                           reason="forged")
        obs = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        obs.connect(mosquitto.host, mosquitto.port)
        obs.loop_start()
        obs.publish(topic("dev-evil", "runs/r-1"), encode(forged), qos=1,
                    retain=True).wait_for_publish(5)
        wait_for(lambda: drops.counts.get("not_placed_here", 0) >= 1, 10,
                 message="the forged update dropped")
        assert adapter.status([handle])["r-1"].state.value == "Running"
        # a restarted control plane (fresh adapter, nothing dispatched yet) re-adopts the
        # run from retained messages: the forged retained one is still not believed
        drops2 = Drops()
        fresh = plain_adapter(mosquitto.url, tmp_path, drops2)
        try:
            restored = Handle(site="fleet", run_id="r-1", backend_id="r-1",
                              node="fleet/dev-real", data={"device": "dev-real"})
            st = wait_for(lambda: fresh.status([restored]).get("r-1"), 10,
                          message="the real update re-adopted")
            assert st.state.value == "Running"
            assert drops2.counts.get("not_placed_here", 0) >= 1
        finally:
            fresh.close()
        open_gate(gate)
        wait_for(lambda: adapter.status([handle])["r-1"].state.value == "Succeeded", 20,
                 message=lambda: real.logs())
        obs.publish(topic("dev-evil", "runs/r-1"), b"", qos=1, retain=True).wait_for_publish(5)
        obs.loop_stop()
        obs.disconnect()
        adapter.release(handle)
    finally:
        adapter.close()


def test_an_unenrolled_hello_never_becomes_a_node(
        mosquitto: Mosquitto, agents: AgentFactory, tmp_path: Path) -> None:
    """The attack: a retained hello from an unenrolled device became a node."""
    drops = Drops()
    adapter = plain_adapter(mosquitto.url, tmp_path, drops, enrolled={"dev-ok"},
                            requireEnrollment=True)
    try:
        rogue = agents.spawn("dev-rogue", "--profile", "pi4")
        ok = agents.spawn("dev-ok", "--profile", "pi4")
        wait_for(lambda: any(n.name == "dev-ok" and n.ready for n in adapter.inventory()), 20,
                 message=lambda: f"dev-ok ready:\n{ok.logs()}")
        wait_for(lambda: drops.counts.get("unenrolled", 0) >= 1, 10,
                 message=lambda: f"the rogue's messages dropped:\n{rogue.logs()}")
        assert "dev-rogue" not in [n.name for n in adapter.inventory()]
        assert "dev-rogue" not in [d["deviceId"] for d in adapter.devices()]
    finally:
        adapter.close()


def test_require_enrollment_needs_a_registry(mosquitto: Mosquitto, tmp_path: Path) -> None:
    from continuum.errors import PermanentError

    site = SiteSpec(name="fleet", kind=SiteKind.devices,
                    config={"broker": mosquitto.url, "requireEnrollment": True})
    with pytest.raises(PermanentError, match="requireEnrollment"):
        DevicesAdapter(site, AdapterContext(artifacts=NoArtifacts(), state_dir=tmp_path))
