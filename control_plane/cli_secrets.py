"""``continuum secrets`` — the sealing keys of site secrets (control_plane/sealing.py).

    continuum secrets new-key                                   # print a new Fernet key
    CONTINUUM_SEALING_KEYS=NEW,OLD continuum secrets rotate --state-dir ./state

``rotate`` re-seals every stored site secret with the primary (first) key; afterwards
the old key can be dropped. It works on the database directly (stop the server first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.fernet import Fernet

from control_plane.cli_sites import console, err
from control_plane.sealing import SealingError, load_sealer

app = typer.Typer(help="Sealing keys of the site secrets kept in the database.",
                  no_args_is_help=True)


@app.command("new-key")
def new_key() -> None:
    """Print a new Fernet key (for CONTINUUM_SEALING_KEYS); nothing is stored."""
    console.print(Fernet.generate_key().decode(), highlight=False)


@app.command("rotate")
def rotate(
    state_dir: Annotated[Path, typer.Option(help="the server's state directory (database "
                                            "and, without CONTINUUM_SEALING_KEYS, sealing.key)")]
        = Path("./state"),
) -> None:
    """Re-seal every site secret with the primary sealing key (the first of
    CONTINUUM_SEALING_KEYS, or the first line of <state-dir>/sealing.key). Needs the
    server extra."""
    from control_plane.cli import _server_extra  # cli imports this module first

    with _server_extra("secrets rotate"):
        from control_plane.federation import reseal_sites
        from control_plane.settings import Settings
        from control_plane.store import SiteRow, Store
    settings = Settings(state_dir=state_dir)
    if settings.database_url is None and not (state_dir / "continuum.db").exists():
        err.print(f"[red]error:[/red] no database at {state_dir / 'continuum.db'}; give the "
                  "server's --state-dir")
        raise typer.Exit(1)
    keys = settings.sealing_keys.get_secret_value() if settings.sealing_keys else None
    store = Store(settings.db_url)
    try:
        n = reseal_sites(store, load_sealer(state_dir, keys))
        store.vacuum(SiteRow.__tablename__)  # no page keeps a value sealed with the old key
    except SealingError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    finally:
        store.close()
    console.print(f"re-sealed {n} site secret(s) with the primary key", highlight=False)
