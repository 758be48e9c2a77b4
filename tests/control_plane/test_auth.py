"""API identity (issue 12 items 1 and 10): the route × role × tenant matrix generated from
/openapi.json, bad tokens, tenant isolation, the tokens API and CLI, client contexts,
the bootstrap token and the audit trail."""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from control_plane.access import ROUTE_RULES, Rule
from control_plane.auth import Role
from control_plane.cli import app
from control_plane.client import ApiError, Client
from control_plane.server import ControlPlane
from tests.control_plane.harness import control_plane, served, wait_state, workflow
from tests.helpers import admin_token

Env = tuple[ControlPlane, TestClient, dict[str, str]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mint(cp: ControlPlane, subject: str, roles: list[Role], tenants: list[str]) -> str:
    return cp.auth.mint(subject, roles, tenants)[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One control plane; tokens: user of tenant a, of tenant b, of both, one per role,
    one with no role; a finished workflow of tenant a (``wf``, ``run``)."""
    with control_plane(tmp_path_factory.mktemp("auth") / "state") as (cp, client):
        tokens = {
            "a": mint(cp, "alice", [Role.user], ["a"]),
            "b": mint(cp, "bob", [Role.user], ["b"]),
            "ab": mint(cp, "carol", [Role.user], ["a", "b"]),
            "user": mint(cp, "u", [Role.user], ["c"]),
            "hpc-admin": mint(cp, "h", [Role.hpc_admin], []),
            "cluster-admin": mint(cp, "k", [Role.cluster_admin], []),
            "none": mint(cp, "nobody", [], []),
        }
        doc = workflow("tenant-a")
        doc["metadata"]["tenant"] = "a"
        r = client.post("/v1/workflows", json=doc)
        assert r.status_code == 201, r.text
        wf = wait_state(client, r.json()["id"], ("Succeeded",))
        tokens["wf"], tokens["run"] = wf["id"], wf["runs"][0]["id"]
        yield cp, client, tokens


def openapi_routes(client: TestClient) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    return sorted((m.upper(), p) for p, ops in spec["paths"].items() for m in ops)


def fill(path: str, values: dict[str, str] | None = None) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: (values or {}).get(m.group(1), "x"), path)


def call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> Any:
    body = {} if method in ("POST", "PUT") else None
    return client.request(method, path, headers=headers, json=body)


# ---------------------------------------------------------------- the matrix


def test_every_route_in_the_openapi_document_has_a_rule(env: Env) -> None:
    _, client, _ = env
    routes = openapi_routes(client)
    assert len(routes) > 25
    missing = [f"{m} {p}" for m, p in routes if (m, p) not in ROUTE_RULES]
    assert missing == [], f"routes without an access rule in control_plane/access.py: {missing}"
    stale = [f"{m} {p}" for m, p in ROUTE_RULES if (m, p) not in routes]
    assert stale == [], f"rules for routes that do not exist: {stale}"


def test_without_a_token_every_non_public_route_is_401(env: Env) -> None:
    _, client, _ = env
    wrong = []
    for method, path in openapi_routes(client):
        rule = ROUTE_RULES[(method, path)]
        r = call(client, method, fill(path), {"Authorization": ""})
        if rule.kind == "bearer" and (r.status_code != 401
                                      or not r.headers.get("www-authenticate", "")
                                      .startswith("Bearer")):
            wrong.append(f"{method} {path}: {r.status_code}")
        if rule.kind == "public" and r.status_code in (401, 403):
            wrong.append(f"{method} {path} is public but answered {r.status_code}")
    assert wrong == []


def lacking(rule: Rule) -> str | None:
    """A token kind holding none of ``rule``'s roles (None: any token passes)."""
    if rule.kind != "bearer" or not rule.roles:
        return None
    return next(k for k in ("user", "hpc-admin", "cluster-admin") if Role(k) not in rule.roles)


def test_a_token_lacking_the_role_is_403_and_any_token_passes_open_rules(env: Env) -> None:
    _, client, tokens = env
    wrong = []
    for method, path in openapi_routes(client):
        rule = ROUTE_RULES[(method, path)]
        kind = lacking(rule)
        if kind is not None:
            r = call(client, method, fill(path), bearer(tokens[kind]))
            if r.status_code != 403 or "admin" not in r.json()["detail"]:
                wrong.append(f"{method} {path} with a {kind} token: {r.status_code}")
            holder = "user" if Role.user in rule.roles else rule.roles[0].value
            r = call(client, method, fill(path), bearer(tokens.get(holder, tokens["user"])))
            if r.status_code in (401, 403) and holder in tokens:
                wrong.append(f"{method} {path} with a {holder} token: {r.status_code}")
        elif rule.kind == "bearer":
            r = call(client, method, fill(path), bearer(tokens["none"]))
            if r.status_code in (401, 403):
                wrong.append(f"{method} {path} with a role-less token: {r.status_code}")
    assert wrong == []


def test_another_tenants_objects_are_404_for_every_tenant_route(env: Env) -> None:
    _, client, tokens = env
    ids = {"workflow_id": tokens["wf"], "run_id": tokens["run"]}
    checked = 0
    for (method, path), rule in sorted(ROUTE_RULES.items()):
        if not rule.tenant:
            continue
        params = re.findall(r"\{(\w+)\}", path)
        if params:
            r = call(client, method, fill(path, ids), bearer(tokens["b"]))
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["detail"] == call(client, method, fill(path, {
                k: "nope" for k in params}), bearer(tokens["b"])).json()["detail"].replace(
                "nope", ids[params[0]])  # the same answer as a missing object
            assert call(client, method, fill(path, ids), bearer(tokens["a"])).status_code \
                != 404, (method, path)
            checked += 1
        elif method == "GET":
            seen_b = client.get(path, headers=bearer(tokens["b"])).json()["items"]
            seen_a = client.get(path, headers=bearer(tokens["a"])).json()["items"]
            assert seen_b == [] and seen_a, path
            checked += 1
    assert checked >= 5
    r = client.get("/v1/runs", params={"workflow": tokens["wf"]}, headers=bearer(tokens["b"]))
    assert r.json()["items"] == []


def test_the_tenant_of_a_submitted_workflow(env: Env) -> None:
    _, client, tokens = env
    r = client.post("/v1/workflows", json=workflow("mine"), headers=bearer(tokens["a"]))
    assert r.status_code == 201 and r.json()["tenant"] == "a"
    r = client.post("/v1/workflows", json=workflow("which"), headers=bearer(tokens["ab"]))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["metadata", "tenant"]
    doc = workflow("theirs")
    doc["metadata"]["tenant"] = "b"
    r = client.post("/v1/workflows", json=doc, headers=bearer(tokens["a"]))
    assert r.status_code == 403 and "metadata.tenant" in r.json()["detail"]
    r = client.post("/v1/workflows", json=doc, headers=bearer(tokens["ab"]))
    assert r.status_code == 201 and r.json()["tenant"] == "b"
    assert client.post("/v1/workflows", json=workflow("adm")).json()["tenant"] == "default"


# ---------------------------------------------------------------- bad tokens


def claims(cp: ControlPlane, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": cp.settings.auth_issuer, "aud": cp.settings.auth_audience, "sub": "eve",
            "iat": now, "exp": now + 600, "jti": "not-issued", "roles": ["admin"],
            "tenants": []}
    return {**base, **over}


def test_expired_forged_wrong_audience_unknown_and_revoked_tokens_are_401(env: Env) -> None:
    cp, client, _ = env
    key = cp.auth._key
    good_token, row = cp.auth.mint("eve", [Role.admin], [])
    good = jwt.decode(good_token, options={"verify_signature": False})
    cases = {
        "expired": (jwt.encode({**good, "exp": int(time.time()) - 5}, key, "HS256"),
                    "expired"),
        "forged": (jwt.encode(good, b"k" * 32, "HS256"), "signature"),
        "none-alg": (jwt.encode(good, None, "none"), "not valid"),
        "wrong audience": (jwt.encode({**good, "aud": "another-api"}, key, "HS256"),
                           "audience"),
        "wrong issuer": (jwt.encode({**good, "iss": "elsewhere"}, key, "HS256"), "issued"),
        "never issued": (jwt.encode(claims(cp), key, "HS256"), "unknown"),
        "garbage": ("abc.def", "not a JWT"),
    }
    for name, (token, why) in cases.items():
        r = client.get("/v1/workflows", headers=bearer(token))
        assert r.status_code == 401, name
        assert why in r.json()["detail"], (name, r.json())
        assert r.headers["www-authenticate"].startswith("Bearer"), name
    assert client.get("/v1/workflows", headers=bearer(good_token)).status_code == 200
    assert client.delete(f"/v1/tokens/{row.id}").status_code == 200
    r = client.get("/v1/workflows", headers=bearer(good_token))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


# ---------------------------------------------------------------- tokens API


def test_tokens_api_admin_mints_anything_a_user_only_a_subset_for_itself(env: Env) -> None:
    _, client, tokens = env
    r = client.post("/v1/tokens", json={"subject": "sa:ci", "roles": ["user"],
                                        "tenants": ["a"], "description": "CI"})
    assert r.status_code == 201, r.text
    sa = r.json()
    assert sa["subject"] == "sa:ci" and sa["createdBy"] == "admin"
    assert client.get("/v1/workflows", headers=bearer(sa["token"])).status_code == 200
    a = bearer(tokens["ab"])
    for body, field in (({"subject": "bob", "roles": ["user"]}, "subject"),
                        ({"roles": ["admin"]}, "roles"),
                        ({"roles": ["user"], "tenants": ["z"]}, "tenants")):
        r = client.post("/v1/tokens", json=body, headers=a)
        assert r.status_code == 403 and r.json()["detail"].startswith(field), r.text
    r = client.post("/v1/tokens", json={"roles": ["user"], "tenants": ["b"], "ttlS": 60},
                    headers=a)
    assert r.status_code == 201 and r.json()["subject"] == "carol"
    narrow = r.json()
    assert client.get(f"/v1/workflows/{tokens['wf']}",
                      headers=bearer(narrow["token"])).status_code == 404
    r = client.post("/v1/tokens", json={"roles": ["root"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-2:] == ["roles", 0]
    mine = client.get("/v1/tokens", headers=a).json()["items"]
    assert {t["subject"] for t in mine} == {"carol"} and "token" not in mine[0]
    assert client.delete(f"/v1/tokens/{sa['id']}", headers=a).status_code == 404
    assert client.delete(f"/v1/tokens/{narrow['id']}", headers=a).status_code == 200
    every = {t["subject"] for t in client.get("/v1/tokens").json()["items"]}
    assert {"admin", "alice", "carol", "sa:ci"} <= every


# ---------------------------------------------------------------- bootstrap, audit


def test_bootstrap_admin_token_is_0600_and_kept_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with control_plane(state) as (cp, client):
        path = state / "admin.token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((state / "auth" / "jwt.key").stat().st_mode) == 0o600
        first = admin_token(cp)
        assert client.get("/v1/tokens").json()["items"][0]["description"] == \
            "bootstrap admin token"
    with control_plane(state) as (cp, client):
        assert admin_token(cp) == first
        assert client.get("/v1/sites").status_code == 200


def test_audit_records_every_mutating_call_for_admins(env: Env) -> None:
    _, client, tokens = env
    r = client.post("/v1/workflows", json=workflow("audited"), headers=bearer(tokens["a"]))
    wid = r.json()["id"]
    client.delete(f"/v1/workflows/{wid}", headers={"Authorization": ""})
    client.delete(f"/v1/workflows/{wid}", headers=bearer(tokens["b"]))
    assert client.get("/v1/audit", headers=bearer(tokens["a"])).status_code == 403
    items = client.get("/v1/audit", params={"path": f"/v1/workflows/{wid}"}).json()["items"]
    assert [(i["method"], i["subject"], i["status"], i["outcome"]) for i in items] == [
        ("DELETE", "bob", 404, "failed"), ("DELETE", "-", 401, "denied")]
    sub = client.get("/v1/audit", params={"subject": "alice", "method": "POST",
                                          "outcome": "ok"}).json()
    assert sub["items"][0]["path"] == "/v1/workflows" and sub["items"][0]["tenant"] == "a"
    assert sub["items"][0]["tokenId"]
    page = client.get("/v1/audit", params={"limit": 1, "offset": 1}).json()
    assert len(page["items"]) == 1 and page["total"] >= 4
    assert client.get("/v1/audit", params={"since": "2020-01-01T00:00:00"}).status_code == 422
    before = client.get("/v1/audit").json()["total"]
    client.get("/v1/workflows")
    assert client.get("/v1/audit").json()["total"] == before  # reads are not recorded


# ---------------------------------------------------------------- CLI and client config


def test_cli_tokens_audit_and_contexts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTINUUM_CONFIG", str(tmp_path / "config.yaml"))
    runner = CliRunner()
    with served(tmp_path / "state") as url:
        r = runner.invoke(app, ["tokens", "create", "--role", "user", "--tenant", "a",
                                "--subject", "dora", "--url", url])
        assert r.exit_code == 0, r.output
        token = r.stdout.strip().splitlines()[-1]
        r = runner.invoke(app, ["tokens", "list", "--url", url, "--json"])
        dora = next(t for t in r.stdout and __import__("json").loads(r.stdout)["items"]
                    if t["subject"] == "dora")
        monkeypatch.delenv("CONTINUUM_TOKEN")
        assert Client(url).ready()
        with pytest.raises(ApiError) as e:
            Client(url).workflows()
        assert e.value.status == 401
        r = runner.invoke(app, ["config", "set-context", "lab", "--server", url,
                                "--token", token])
        assert r.exit_code == 0, r.output
        assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == 0o600
        assert Client().workflows()["items"] == []  # server and token from the context
        r = runner.invoke(app, ["get", "workflows"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["audit", "--url", url])
        assert r.exit_code == 1 and "403" in r.output
        admin = admin_token(tmp_path / "state")
        r = runner.invoke(app, ["--token", admin, "tokens", "revoke", dora["id"]])
        assert r.exit_code == 0 and f"token {dora['id']} of dora revoked" in r.stdout
        r = runner.invoke(app, ["--token", admin, "audit", "--subject", "admin"])
        assert r.exit_code == 0 and "/v1/tokens" in r.stdout, r.output
        r = runner.invoke(app, ["get", "workflows"])  # the context's token, now revoked
        assert r.exit_code == 1 and "revoked" in r.output
        r = runner.invoke(app, ["config", "use-context", "nowhere"])
        assert r.exit_code == 1 and "no context" in r.output


# ---------------------------------------------------------------- external OIDC issuer


def test_an_external_oidc_issuers_tokens_are_accepted_with_their_claims(
        tmp_path: Path, database_url: str) -> None:
    """... on SQLite and PostgreSQL (which enforces column lengths): a ``jti`` longer than
    the audit's column is cut there, a ``sub`` longer than a subject may be is refused."""
    import http.server
    import json
    import threading

    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1", "use": "sig",
           "alg": "RS256"}

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"keys": [jwk]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    issuer = "https://idp.example.org/realms/hpc"
    try:
        with control_plane(tmp_path / "state", database_url=database_url,
                           oidc_issuer=issuer, oidc_audience="continuum",
                           oidc_jwks_url=f"http://127.0.0.1:{httpd.server_address[1]}/certs",
                           oidc_roles_claim="realm_access.roles",
                           oidc_tenants_claim="groups") as (_, client):
            now = int(time.time())
            good = {"iss": issuer, "aud": "continuum", "sub": "erin", "iat": now,
                    "exp": now + 300, "realm_access": {"roles": ["user", "offline_access"]},
                    "groups": ["physics"]}

            def sign(c: dict[str, Any]) -> dict[str, str]:
                return bearer(jwt.encode(c, key, "RS256", headers={"kid": "k1"}))

            doc = workflow("from-oidc")
            r = client.post("/v1/workflows", json=doc, headers=sign(good))
            assert r.status_code == 201 and r.json()["tenant"] == "physics", r.text
            assert client.get("/v1/audit", headers=sign(good)).status_code == 403
            for bad in ({**good, "aud": "other"}, {**good, "exp": now - 10}):
                r = client.get("/v1/workflows", headers=sign(bad))
                assert r.status_code == 401 and "OIDC" in r.json()["detail"]
            r = client.post("/v1/workflows", json=workflow("long-jti"),
                            headers=sign({**good, "jti": "j" * 100}))
            assert r.status_code == 201, r.text
            audit = client.get("/v1/audit", params={"subject": "erin"}).json()["items"]
            assert [a["tokenId"] for a in audit] == ["j" * 64, None], audit
            r = client.get("/v1/workflows", headers=sign({**good, "sub": "e" * 129}))
            assert r.status_code == 401, r.text
            assert "sub claim is longer than 128 characters" in r.json()["detail"]
            other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            r = client.get("/v1/workflows", headers=bearer(
                jwt.encode(good, other, "RS256", headers={"kid": "k1"})))
            assert r.status_code == 401
    finally:
        httpd.shutdown()


def test_a_sites_kind_decides_which_admin_may_change_it(env: Env) -> None:
    """hpc-admins manage Slurm sites, cluster-admins Kubernetes, KubeEdge and device sites,
    only admins the simulator (issue 12 item 2): the rule reads the body's kind on
    registration and the stored site's kind on drain, resume and remove."""
    _, client, t = env
    slurm = {"name": "hpc", "kind": "slurm", "tier": "hpc", "location": "dc",
             "config": {"url": "http://127.0.0.1:9", "user": "alice"}}
    r = client.post("/v1/sites", json=slurm, headers=bearer(t["cluster-admin"]))
    assert r.status_code == 403 and "hpc-admin" in r.json()["detail"], r.text
    r = client.post("/v1/sites", json={**slurm, "kind": "kubernetes"},
                    headers=bearer(t["hpc-admin"]))
    assert r.status_code == 403 and "cluster-admin" in r.json()["detail"], r.text
    # the right role gets past the rule to the site's own check (nothing listens there)
    r = client.post("/v1/sites", json=slurm, headers=bearer(t["hpc-admin"]))
    assert r.status_code == 422, r.text
    # the harness's site "cloud" is a simulator: no site admin but admin may drain it
    for role in ("hpc-admin", "cluster-admin"):
        r = client.post("/v1/sites/cloud/drain", headers=bearer(t[role]))
        assert r.status_code == 403 and "admin" in r.json()["detail"], r.text
    assert client.post("/v1/sites/cloud/drain").status_code == 200
    assert client.post("/v1/sites/cloud/resume").status_code == 200
