"""``continuum devices`` — administer the devices of ``devices`` sites.

    continuum devices forget SITE DEVICE

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
