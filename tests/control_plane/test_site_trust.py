"""Issue 12 items 2 and 3 without a cluster: site registration is safe against a hostile
caller, and secrets are sealed.

* The root-token exfiltration: an attacker registers a Slurm site naming the server's
  JWT key file, user root and its own URL as slurmrestd. Every variant is a 422 naming
  the field, and the attacker's fake slurmrestd (a real HTTP server here) never
  receives a token, let alone one for root.
* The registration probe: a URL that is not slurmrestd gets an error that names the
  HTTP status, never the body it answered; redirects are not followed; server paths and
  non-http(s) URLs are 422s that do not depend on whether the file exists.
* Sealing: :class:`Sealer` round trip, rotation with two keys, and the key file's mode.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from continuum.model import SiteKind
from control_plane.routes_sites import require_site_admin, site_admin_roles
from control_plane.sealing import Sealer, SealingError, load_sealer, seal_config, unseal_config
from control_plane.store import SiteRow
from tests.control_plane.harness import control_plane

BANNER = "fake-server-banner-7f3a9c"
"""What the fake server puts in every body: it must never come back in an API answer."""


@dataclass
class FakeServer:
    """A loopback HTTP server that records every request and answers ``status`` with a
    body carrying :data:`BANNER` (``/redirect`` answers 302 to ``/landed``)."""

    status: int = 404
    content_type: str = "text/plain"
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                fake.requests.append({"path": self.path, "headers": dict(self.headers)})
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", "/landed")
                    self.end_headers()
                    return
                body = (json.dumps({"banner": BANNER}) if fake.content_type == "application/json"
                        else f"<html>{BANNER}</html>").encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", fake.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tokens_sent(self) -> list[tuple[str | None, str]]:
        return [(r["headers"].get("X-SLURM-USER-NAME"), r["headers"]["X-SLURM-USER-TOKEN"])
                for r in self.requests if "X-SLURM-USER-TOKEN" in r["headers"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def slurm_site(name: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "kind": "slurm", "config": {"workdir": "/tmp", **config}}


OWN_KEY = base64.b64encode(b"attacker-chosen-key-32-bytes-ok!").decode()


def test_root_token_exfiltration_is_refused(tmp_path: Path, fake: FakeServer) -> None:
    server_key = tmp_path / "state" / "jwt.key"  # a key file that exists on the server
    server_key.parent.mkdir()
    server_key.write_bytes(os.urandom(32))
    attempts = [
        # (config, the field the 422 names)
        ({"url": fake.url, "user": "root", "jwtKey": str(server_key)}, ["config", "jwtKey"]),
        ({"url": fake.url, "user": "root", "jwtKeyFile": str(server_key)},
         ["config", "jwtKeyFile"]),
        ({"url": fake.url, "user": "alice", "jwtKeyFile": str(server_key)},
         ["config", "jwtKeyFile"]),
        ({"url": fake.url, "user": "root", "jwtKey": OWN_KEY}, ["config", "user"]),
        ({"url": fake.url, "user": "slurm", "jwtKey": OWN_KEY}, ["config", "user"]),
        ({"url": fake.url, "user": "alice", "jwtKey": OWN_KEY,
          "userMap": [{"tenant": "default", "user": "root"}]}, ["config", "userMap", "0", "user"]),
        ({"url": fake.url, "user": "alice", "jwtKey": OWN_KEY, "slurmUser": "slurmadm",
          "userMap": [{"tenant": "lab", "user": "slurmadm"}]},
         ["config", "userMap", "0", "user"]),
        ({"url": "file:///etc/passwd", "user": "alice", "jwtKey": OWN_KEY}, ["config", "url"]),
        ({"socket": "/run/slurmrestd/slurmrestd.socket", "user": "alice"}, ["config", "socket"]),
    ]
    with control_plane(tmp_path / "cp") as (_, api):
        for i, (config, loc) in enumerate(attempts):
            r = api.post("/v1/sites", json=slurm_site(f"evil-{i}", **config))
            assert r.status_code == 422, (config, r.text)
            assert r.json()["detail"][0]["loc"] == loc, (config, r.json())
            assert str(server_key) not in r.text
        assert [s["name"] for s in api.get("/v1/sites").json()["items"]] == ["cloud"]
    assert fake.requests == [], "the attacker's server was contacted"
    assert fake.tokens_sent() == []


def test_tokens_go_only_to_the_mapped_user_and_probes_are_not_echoed(tmp_path: Path,
                                                                     fake: FakeServer) -> None:
    with control_plane(tmp_path / "cp") as (_, api):
        r = api.post("/v1/sites", json=slurm_site("probe", url=fake.url, user="alice",
                                                  jwtKey=OWN_KEY))
        assert r.status_code == 422, r.text
        assert "serves no OpenAPI document (/openapi/v3: HTTP 404" in r.text, r.text
        assert BANNER not in r.text
        assert {user for user, _ in fake.tokens_sent()} == {"alice"}

        fake.status, fake.content_type = 200, "application/json"
        r = api.post("/v1/sites", json=slurm_site("probe", url=fake.url, user="alice",
                                                  jwtKey=OWN_KEY))
        assert r.status_code == 422, r.text
        assert "serves no OpenAPI document (/openapi/v3: no OpenAPI paths" in r.text, r.text
        assert BANNER not in r.text

        r = api.post("/v1/sites", json=slurm_site("probe", url=f"{fake.url}/redirect",
                                                  user="alice", jwtKey=OWN_KEY))
        assert r.status_code == 422, r.text
        assert BANNER not in r.text
        assert not any(q["path"].startswith("/landed") for q in fake.requests), \
            "a redirect was followed"
        assert {user for user, _ in fake.tokens_sent()} == {"alice"}

        r = api.post("/v1/sites", json={"name": "prom", "kind": "sim", "config": {},
                                        "prometheusUrl": "file:///etc/passwd"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["prometheusUrl"]

        for server, loc in ((f"{fake.url}/redirect", ["config"]),  # Kubernetes too
                            ("file:///etc/passwd", ["config", "kubeconfig"])):
            r = api.post("/v1/sites", json={"name": "k8s", "kind": "kubernetes",
                                            "config": {"kubeconfig": kubeconfig(server)}})
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"] == loc, r.text
            assert BANNER not in r.text
        assert not any(q["path"].startswith("/landed") for q in fake.requests), \
            "the Kubernetes client followed a redirect"


def kubeconfig(server: str) -> str:
    return ("apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
            "users: [{name: u, user: {token: t}}]\n")


@pytest.mark.parametrize("key,value", [
    ("kubeconfigPath", "/etc/kubernetes/admin.conf"), ("inCluster", True)])
def test_kubernetes_server_credentials_are_refused_over_the_api(tmp_path: Path, key: str,
                                                                 value: Any) -> None:
    with control_plane(tmp_path / "cp") as (_, api):
        r = api.post("/v1/sites", json={"name": "k", "kind": "kubernetes",
                                        "config": {key: value}})
        assert r.status_code == 422, r.text
        problem = r.json()["detail"][0]
        assert problem["loc"] == ["config", key] and "federation file" in problem["msg"]


def test_a_malformed_kubeconfig_is_not_quoted_back(tmp_path: Path) -> None:
    secret = "token-9b1d07e2c4"
    with control_plane(tmp_path / "cp") as (_, api):
        r = api.post("/v1/sites", json={"name": "k", "kind": "kubernetes", "config": {
            "kubeconfig": f"clusters: []\nusers: [{{name: u, user: {{token: {secret}: x}}}}]\n"}})
        assert r.status_code == 422, r.text
        problem = r.json()["detail"][0]
        assert problem["loc"] == ["config", "kubeconfig"] and "line 2" in problem["msg"]
        assert secret not in r.text


def test_site_admin_roles_by_kind() -> None:
    assert site_admin_roles(SiteKind.slurm) == ("hpc-admin",)
    for kind in (SiteKind.kubernetes, SiteKind.kubeedge, SiteKind.devices):
        assert site_admin_roles(kind) == ("cluster-admin",)
    assert site_admin_roles(SiteKind.sim) == ("admin",)
    assert callable(require_site_admin)


def test_sealer_round_trip_rotation_and_key_file(tmp_path: Path) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    sealed = Sealer([old]).seal(b"s3cret")
    assert b"s3cret" not in sealed.encode()
    both = Sealer([new, old])
    assert both.unseal(sealed) == b"s3cret"
    rotated = both.rotate(sealed)
    assert Sealer([new]).unseal(rotated) == b"s3cret"
    with pytest.raises(SealingError, match="cannot be opened"):
        Sealer([new]).unseal(sealed)
    with pytest.raises(SealingError, match="not a Fernet key"):
        Sealer([b"short"])

    sealer = load_sealer(tmp_path / "state")
    assert (tmp_path / "state" / "sealing.key").stat().st_mode & 0o777 == 0o600
    assert load_sealer(tmp_path / "state").unseal(sealer.seal(b"x")) == b"x"  # same key kept
    cfg = {"url": "http://h:1", "jwtKey": "a2V5", "user": "u"}
    stored = seal_config("slurm", cfg, sealer)
    assert stored["url"] == "http://h:1" and "a2V5" not in json.dumps(stored)
    assert unseal_config("slurm", stored, sealer) == cfg


def test_secrets_stored_in_clear_before_sealing_are_sealed_at_start(tmp_path: Path) -> None:
    password = "old-clear-password-4c1e"
    with control_plane(tmp_path / "cp") as (cp, _):
        with cp.store.session() as s:  # a row as written before sealing existed
            s.add(SiteRow(name="fleet", kind="devices", spec={
                "name": "fleet", "kind": "devices",
                "config": {"broker": "mqtt://127.0.0.1:1", "password": password}}))
    db = tmp_path / "cp" / "continuum.db"
    assert password.encode() in db.read_bytes()
    with control_plane(tmp_path / "cp") as (cp, api):
        assert cp.federation.site("fleet").spec.config["password"] == password  # opened
        assert api.get("/v1/sites/fleet").json()["config"]["password"] == "<redacted>"
        with cp.store.session() as s:
            row = s.get(SiteRow, "fleet")
            assert row is not None and "$sealed" in row.spec["config"]["password"]
    assert password.encode() not in db.read_bytes()


def test_secrets_rotate_reseals_with_the_new_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from control_plane.cli import app

    state = tmp_path / "cp"
    with control_plane(state) as (_, api):
        r = api.post("/v1/sites", json={"name": "fleet", "kind": "devices", "config": {
            "broker": "mqtt://127.0.0.1:1", "password": "rotate-me-5d2e"}})
        assert r.status_code == 201, r.text
    runner = CliRunner()
    old = (state / "sealing.key").read_text().split()[0]
    new = runner.invoke(app, ["secrets", "new-key"]).output.strip()
    args = ["secrets", "rotate", "--state-dir", str(state)]
    r = runner.invoke(app, args, env={"CONTINUUM_SEALING_KEYS": f"{new},{old}"})
    assert r.exit_code == 0 and "re-sealed 1 site secret(s)" in r.output, r.output
    r = runner.invoke(app, args, env={"CONTINUUM_SEALING_KEYS": new})
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args, env={"CONTINUUM_SEALING_KEYS": ""})  # the old key file
    assert r.exit_code == 1 and "cannot be opened" in r.output, r.output
    with control_plane(state, sealing_keys=new) as (cp, _):
        assert cp.federation.site("fleet").spec.config["password"] == "rotate-me-5d2e"


def test_a_devices_site_takes_its_ca_as_pem_text(tmp_path: Path) -> None:
    from control_plane.pki import init_pki

    files = init_pki(tmp_path / "pki", ["localhost"])
    with control_plane(tmp_path / "cp") as (cp, api):
        r = api.post("/v1/sites", json={"name": "fleet", "kind": "devices", "config": {
            "broker": "mqtts://127.0.0.1:1", "tlsCa": files.ca_cert.read_text()}})
        assert r.status_code == 201, r.text
        assert cp.federation.site("fleet").spec.config["tlsCa"].startswith("-----BEGIN")
