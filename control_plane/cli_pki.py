"""``continuum pki init`` — a CA and the broker's TLS certificate (control_plane/pki.py).

    continuum pki init --dir /etc/continuum/pki --host broker.example.org --host 10.0.0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from control_plane.cli_sites import console, err
from control_plane.pki import init_pki

app = typer.Typer(help="The broker's TLS: a CA and a server certificate.",
                  no_args_is_help=True)


@app.command("init")
def init(
    dir: Annotated[Path, typer.Option("--dir", help="where ca.pem, ca.key, broker.pem and "
                                      "broker.key go (an existing ca.pem/ca.key is used)")],
    host: Annotated[list[str], typer.Option(
        "--host", help="DNS name or IP address the broker is reached at (repeatable)")],
    days: Annotated[int, typer.Option(help="validity of the broker certificate (days)")] = 825,
    force: Annotated[bool, typer.Option(help="replace an existing broker certificate")]
        = False,
) -> None:
    """Create a CA (unless DIR has one) and issue the broker's server certificate."""
    try:
        files = init_pki(dir, host, days=days, force=force)
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"CA {'created' if files.ca_created else 'kept'}: {files.ca_cert} "
                  f"(key {files.ca_key}, 0600)", highlight=False)
    console.print(f"broker certificate for {', '.join(host)}: {files.server_cert} "
                  f"(key {files.server_key}, 0600)", highlight=False)
    console.print("Mosquitto: certfile/keyfile = the broker files; devices site config: "
                  f"tlsCa: {files.ca_cert}", highlight=False)
