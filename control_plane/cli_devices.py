"""``continuum devices`` — administer the devices of ``devices`` sites.

    continuum devices forget SITE DEVICE
    continuum devices token SITE --tenant T [--ttl S]
    continuum devices revoke SITE DEVICE

Talks to a running control plane (``--url``, default ``$CONTINUUM_URL``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from control_plane.cli_sites import DEFAULT_URL, UrlOpt, _call, console

app = typer.Typer(help="Administer the devices of devices sites.", no_args_is_help=True)


@app.command("forget")
def forget(
    site: Annotated[str, typer.Argument(help="the devices site, e.g. lab")],
    device: Annotated[str, typer.Argument(help="the device id, as in `continuum get devices`")],
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Forget a device that left for good: its retained hello/status are cleared and it
    no longer keeps its site Degraded. Refused while it is online or has runs."""
    out = _call(url, "DELETE", f"/v1/devices/{site}/{device}")
    console.print(f"device {device} of site {site} forgotten; site health now "
                  f"{out['health']}" + (f" ({out['message']})" if out["message"] else ""))


@app.command("token")
def token(
    site: Annotated[str, typer.Argument(help="the devices site the device will join")],
    tenant: Annotated[str, typer.Option(help="tenant (project) the device works for")],
    ttl: Annotated[float | None, typer.Option(
        "--ttl", help="lifetime in seconds (default: the server's enrollment_token_ttl_s)")]
        = None,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Create a one-time enrolment token; give it to `continuum-agent enroll --token`."""
    body: dict[str, object] = {"site": site, "tenant": tenant}
    if ttl is not None:
        body["ttlS"] = ttl
    out = _call(url, "POST", "/v1/devices/enrollment-tokens", json=body)
    console.print(f"enrolment token for site {out['site']} (tenant {out['tenant']}), "
                  f"valid until {out['expiresAt']}, usable once:")
    console.print(out["token"], soft_wrap=True, highlight=False)


@app.command("revoke")
def revoke(
    site: Annotated[str, typer.Argument(help="the devices site")],
    device: Annotated[str, typer.Argument(help="the device id")],
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Revoke a device's broker credentials: the broker disconnects it at once and
    refuses it until it enrols again with a new token."""
    out = _call(url, "DELETE", f"/v1/devices/{site}/{device}/credentials")
    console.print(f"device {device} of site {site}: credentials revoked at {out['revokedAt']}")
