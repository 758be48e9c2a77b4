"""``continuum tokens``, ``continuum audit`` and ``continuum config``: API identity from
the command line (docs/security.md "API identity and tenants", "Audit").

    continuum tokens create --role user --tenant physics --subject alice
    continuum tokens create --role user --tenant physics --subject sa:ci --ttl 31536000
    continuum tokens list
    continuum tokens revoke ID
    continuum audit --outcome denied
    continuum config set-context lab --server http://lab:8080 --token "$T"
    continuum config use-context lab

The token comes from ``continuum --token``, ``$CONTINUUM_TOKEN`` or the current context
of ``~/.config/continuum/config.yaml``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from control_plane import render
from control_plane.cli_sites import DEFAULT_URL, UrlOpt, _call, console, err
from control_plane.client import config_path, load_config, save_config

tokens_app = typer.Typer(help="Create, list and revoke API tokens and service accounts.",
                         no_args_is_help=True)
config_app = typer.Typer(help="Client contexts (server, token, CA) in "
                         "~/.config/continuum/config.yaml.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's JSON")]


def _tokens_table(items: list[dict[str, Any]]) -> Any:
    rows = [[t["id"], t["subject"], ",".join(t["roles"]), ",".join(t["tenants"]) or "-",
             (t["expiresAt"] or "")[:19], "revoked" if t["revokedAt"] else "active"]
            for t in items]
    return render._table("Tokens", rows, [("ID", True), ("SUBJECT", False), ("ROLES", False),
                                          ("TENANTS", False), ("EXPIRES", True),
                                          ("STATE", True)])


@tokens_app.command("create")
def create(
    role: Annotated[list[str], typer.Option("--role", help="admin, hpc-admin, cluster-admin "
                                            "or user; repeat for several")],
    tenant: Annotated[list[str] | None, typer.Option(
        "--tenant", help="a tenant (project); repeat for several")] = None,
    subject: Annotated[str | None, typer.Option(
        help="who it is for (sa:NAME for a service account); default: you")] = None,
    ttl: Annotated[float | None, typer.Option(help="lifetime in seconds")] = None,
    description: Annotated[str, typer.Option(help="a note shown by `tokens list`")] = "",
    url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False,
) -> None:
    """Create a token; it is printed on stdout, shown only this once."""
    body: dict[str, Any] = {"roles": role, "tenants": tenant or [], "description": description}
    if subject:
        body["subject"] = subject
    if ttl:
        body["ttlS"] = ttl
    out = _call(url, "POST", "/v1/tokens", json=body)
    if as_json:
        console.print_json(json.dumps(out))
        return
    err.print(f"token {out['id']} for {out['subject']} ({', '.join(out['roles'])}; tenants "
              f"{', '.join(out['tenants']) or 'none'}), expires {out['expiresAt']}",
              markup=False, highlight=False, soft_wrap=True)
    print(out["token"])


@tokens_app.command("list")
def list_(subject: Annotated[str | None, typer.Option(help="only this subject (admin)")] = None,
          url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Tokens (yours; an admin sees all); never the tokens themselves."""
    out = _call(url, "GET", "/v1/tokens", params={"subject": subject} if subject else {})
    if as_json:
        console.print_json(json.dumps(out))
    else:
        console.print(_tokens_table(out["items"]), crop=False)


@tokens_app.command("revoke")
def revoke(token_id: Annotated[str, typer.Argument(help="the token's id (tokens list)")],
           url: UrlOpt = DEFAULT_URL) -> None:
    """Revoke a token: refused from the next request on."""
    out = _call(url, "DELETE", f"/v1/tokens/{token_id}")
    console.print(f"token {out['id']} of {out['subject']} revoked at {out['revokedAt']}",
                  markup=False, highlight=False)


def audit(
    subject: Annotated[str | None, typer.Option(help="only this subject ('-': no token)")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, denied or failed")] = None,
    path: Annotated[str | None, typer.Option(help="only paths starting with this")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time with zone")] = None,
    limit: int = 50, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False,
) -> None:
    """Mutating API calls, newest first (admin)."""
    params = {k: v for k, v in (("subject", subject), ("tenant", tenant), ("outcome", outcome),
                                ("path", path), ("since", since), ("limit", limit)) if v}
    out = _call(url, "GET", "/v1/audit", params=params)
    if as_json:
        console.print_json(json.dumps(out))
        return
    rows = [[a["at"][:19], a["subject"], a["tenant"] or "-", a["method"], a["path"],
             str(a["status"]), a["outcome"]] for a in out["items"]]
    console.print(render._table("Audit", rows, [
        ("TIME", True), ("SUBJECT", False), ("TENANT", False), ("METHOD", True),
        ("PATH", False), ("STATUS", True), ("OUTCOME", True)]), crop=False)


@config_app.command("set-context")
def set_context(
    name: Annotated[str, typer.Argument(help="context name")],
    server: Annotated[str | None, typer.Option(help="control-plane URL")] = None,
    token: Annotated[str | None, typer.Option(help="API token")] = None,
    ca: Annotated[str | None, typer.Option(help="CA bundle file for an https server")] = None,
    use: Annotated[bool, typer.Option("--use", help="also make it the current context")] = False,
) -> None:
    """Create or update a context (the file is written 0600: it holds tokens)."""
    cfg = load_config()
    ctx = cfg.setdefault("contexts", {}).setdefault(name, {})
    ctx.update({k: v for k, v in (("server", server), ("token", token), ("ca", ca)) if v})
    if use or not cfg.get("current-context"):
        cfg["current-context"] = name
    path = save_config(cfg)
    console.print(f"context {name} saved in {path} (current: {cfg['current-context']})",
                  markup=False, highlight=False)


@config_app.command("use-context")
def use_context(name: Annotated[str, typer.Argument(help="context name")]) -> None:
    """Make a context the current one."""
    cfg = load_config()
    if name not in (cfg.get("contexts") or {}):
        err.print(f"error: no context {name!r} in {config_path()} (set-context first)",
                  markup=False)
        raise typer.Exit(1)
    cfg["current-context"] = name
    save_config(cfg)
    console.print(f"current context: {name}", markup=False)


__all__ = ["audit", "config_app", "tokens_app"]
