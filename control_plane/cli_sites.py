"""``continuum sites`` — register, drain, resume and remove sites (admins).

    continuum sites register slurm NAME --url http://slurmrestd:6820 --user continuum \\
        --jwt-key /etc/continuum/slurm-jwt.key --partition debug --workdir /scratch/continuum
    continuum sites drain NAME
    continuum sites resume NAME
    continuum sites remove NAME [--leave-running]

Each talks to a running control plane (``--url``, default ``$CONTINUUM_URL``).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from control_plane import render
from control_plane.client import ApiError, Client, ConnectionFailed

app = typer.Typer(help="Register, drain, resume and remove sites (admins).", no_args_is_help=True)
register_app = typer.Typer(help="Register a site of one kind.", no_args_is_help=True)
app.add_typer(register_app, name="register")

console = render.make_console()
err = render.make_console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="CONTINUUM_URL", help="control-plane API URL")]
DEFAULT_URL = "http://127.0.0.1:8080"


def _call(url: str, method: str, path: str, **kw: Any) -> Any:
    with Client(url) as c:
        try:
            return c._call(method, path, **kw)
        except (ApiError, ConnectionFailed) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None


def _show(site: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(site))
    else:
        console.print(render.sites_table([site]))
        backend = site.get("backend") or {}
        if backend.get("slurmRelease") or backend.get("dataParser"):
            console.print(f"Slurm {backend.get('slurmRelease') or '?'}, "
                          f"{backend.get('dataParser') or '?'}")


@register_app.command("slurm")
def register_slurm(
    name: Annotated[str, typer.Argument(help="site name (DNS label, e.g. hpc-berlin)")],
    user: Annotated[str, typer.Option(help="Slurm user the jobs run as (JWT claim sun)")],
    workdir: Annotated[str, typer.Option(help="shared directory on the cluster for run files, "
                                              "writable by --user")],
    partition: Annotated[list[str], typer.Option(
        "--partition", "-p", help="allowed partition (repeat); none given: every partition")
    ] = [],  # noqa: B006 - typer reads the default
    rest_url: Annotated[str | None, typer.Option(
        "--rest-url", help="slurmrestd URL, http://host:port")] = None,
    token: Annotated[str | None, typer.Option(help="a JWT from `scontrol token`")] = None,
    token_file: Annotated[Path | None, typer.Option(
        help="file holding a JWT (read here, sent as token)", exists=True, dir_okay=False)] = None,
    jwt_key: Annotated[Path | None, typer.Option(
        help="the cluster's jwt_key file, read here and uploaded (base64; sealed by the "
             "control plane, which mints and refreshes tokens)", exists=True,
        dir_okay=False)] = None,
    slurm_user: Annotated[str | None, typer.Option(
        help="the cluster's SlurmUser (slurm.conf), refused like root; default slurm")] = None,
    tier: Annotated[str, typer.Option(help="tier of the partitions")] = "hpc",
    location: Annotated[str | None, typer.Option(help="location name (for RTTs)")] = None,
    prometheus_url: Annotated[str | None, typer.Option(help="the cluster's Prometheus")] = None,
    idle_watts: Annotated[float | None, typer.Option(help="power of one Slurm node at idle (W)")
                          ] = None,
    max_watts: Annotated[float | None, typer.Option(help="power of one Slurm node at 100 % (W)")
                         ] = None,
    power_source: Annotated[str, typer.Option(help="where the power figures come from")] = "",
    apptainer: Annotated[bool, typer.Option(help="tasks naming an image run under Apptainer")
                         ] = False,
    account: Annotated[str | None, typer.Option(help="Slurm account to charge")] = None,
    qos: Annotated[str | None, typer.Option(help="Slurm QoS of the jobs")] = None,
    reservation: Annotated[str | None, typer.Option(help="Slurm reservation the jobs use")
                           ] = None,
    constraint: Annotated[str | None, typer.Option(
        help="node features the jobs need (sbatch --constraint), e.g. 'avx512&ib'")] = None,
    default_time_limit: Annotated[float | None, typer.Option(
        help="time limit (s) of tasks that give no timeout")] = None,
    output_json: Annotated[bool, typer.Option("--json", help="print the site as JSON")] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Register a Slurm cluster reached through slurmrestd; checks ping and partitions."""
    if token_file is not None:
        if token is not None:
            err.print("[red]error:[/red] give --token or --token-file, not both")
            raise typer.Exit(2)
        token = token_file.read_text().strip().removeprefix("SLURM_JWT=")
    config: dict[str, Any] = {"user": user, "workdir": workdir, "partitions": list(partition)}
    key_b64 = base64.b64encode(jwt_key.read_bytes()).decode() if jwt_key is not None else None
    for key, value in (("url", rest_url), ("token", token),
                       ("jwtKey", key_b64), ("account", account), ("slurmUser", slurm_user),
                       ("qos", qos), ("reservation", reservation), ("constraint", constraint),
                       ("defaultTimeLimit", default_time_limit)):
        if value is not None:
            config[key] = value
    if apptainer:
        config["apptainer"] = True
    if (idle_watts is None) != (max_watts is None):
        err.print("[red]error:[/red] give both --idle-watts and --max-watts, or neither")
        raise typer.Exit(2)
    if idle_watts is not None:
        config["power"] = {"idleWatts": idle_watts, "maxWatts": max_watts,
                           "source": power_source or "given at registration"}
    spec: dict[str, Any] = {"name": name, "kind": "slurm", "tier": tier, "config": config}
    if location:
        spec["location"] = location
    if prometheus_url:
        spec["prometheusUrl"] = prometheus_url
    site = _call(url, "POST", "/v1/sites", json=spec)
    _show(site, output_json)


@app.command("drain")
def drain(name: Annotated[str, typer.Argument(help="site name")], url: UrlOpt = DEFAULT_URL,
          output_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Stop placing new work on the site; running work goes on."""
    _show(_call(url, "POST", f"/v1/sites/{name}/drain"), output_json)


@app.command("resume")
def resume(name: Annotated[str, typer.Argument(help="site name")], url: UrlOpt = DEFAULT_URL,
           output_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Let a drained site take new work again."""
    _show(_call(url, "POST", f"/v1/sites/{name}/resume"), output_json)


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="site name")],
           leave_running: Annotated[bool, typer.Option(
               help="leave the site's running jobs running (untracked) instead of cancelling them")
           ] = False,
           url: UrlOpt = DEFAULT_URL) -> None:
    """Remove a site; its running work is cancelled (or left running) and retried elsewhere."""
    out = _call(url, "DELETE", f"/v1/sites/{name}",
                params={"runs": "leave" if leave_running else "cancel"})
    console.print(f"site {out['site']} removed; runs cancelled: {len(out['cancelled'])}, "
                  f"left running: {len(out['left'])}")
