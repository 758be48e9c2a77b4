"""``continuum`` — the command line of the control plane.

Commands that talk to a running control plane take ``--url`` (default
``$CONTINUUM_URL``, the current context's server, or http://127.0.0.1:8080) and send the
token of ``continuum --token``, ``$CONTINUUM_TOKEN`` or the current context of
``~/.config/continuum/config.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from rich.console import RenderableType
from rich.live import Live

from control_plane import (
    cli_auth,
    cli_db,
    cli_devices,
    cli_kubernetes,
    cli_model,
    cli_pki,
    cli_secrets,
    render,
)
from control_plane.cli_sites import app as sites_app
from control_plane.client import ApiError, Client, ConnectionFailed, current_context

app = typer.Typer(
    help="Continuum: one control plane for devices, edge, cloud and HPC.\n\n"
    "Start with `continuum demo`; run a server with `continuum server`; submit work with "
    "`continuum submit FILE --watch`.",
    no_args_is_help=True,
    add_completion=False,
)
get_app = typer.Typer(help="List workflows, runs, nodes, sites or devices.", no_args_is_help=True)
describe_app = typer.Typer(help="Show one object in full.", no_args_is_help=True)
app.add_typer(get_app, name="get")
app.add_typer(describe_app, name="describe")
app.add_typer(cli_model.app, name="model")
app.add_typer(cli_kubernetes.cluster_app, name="cluster")
app.add_typer(sites_app, name="sites")
app.add_typer(cli_devices.app, name="devices")
app.add_typer(cli_pki.app, name="pki")
app.add_typer(cli_auth.tokens_app, name="tokens")
app.add_typer(cli_auth.config_app, name="config")
app.command("audit")(cli_auth.audit)
app.add_typer(cli_secrets.app, name="secrets")
app.add_typer(cli_db.app, name="db")

console = render.make_console()
T = TypeVar("T")
err = render.make_console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="CONTINUUM_URL",
                                     help="control-plane API URL")]
DEFAULT_URL = "http://127.0.0.1:8080"


class Output(StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


OutOpt = Annotated[Output, typer.Option(
    "--output", "-o", help="table (the columns that fit 80 columns), wide (every column), "
    "json or yaml (the API's objects)")]


@app.callback()
def _global(ctx: typer.Context, token: Annotated[str | None, typer.Option(
        "--token", help="API token (default $CONTINUUM_TOKEN, else the current context of "
        "~/.config/continuum/config.yaml)", show_default=False)] = None) -> None:
    """Continuum: one control plane for devices, edge, cloud and HPC."""
    # the subcommand's --url and the Client read the environment: set it for this one
    # command (``--token``; the current context's server unless CONTINUUM_URL is set)
    env = {"CONTINUUM_TOKEN": token} if token else {}
    server = current_context().get("server")
    if server and "CONTINUUM_URL" not in os.environ:
        env["CONTINUUM_URL"] = str(server)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)

    def restore() -> None:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ctx.call_on_close(restore)


def _client(url: str) -> Client:
    return Client(url)


def _fail(e: Exception) -> NoReturn:
    err.print(f"[red]error:[/red] {e}")
    raise typer.Exit(1)


def _call(fn: Callable[[], T]) -> T:
    """Run one client call; an API or connection error ends the command with its message."""
    try:
        return fn()
    except (ApiError, ConnectionFailed) as e:
        _fail(e)


LIBRARY_LOGGERS = ("httpx", "httpcore", "amqtt", "transitions", "kubernetes", "urllib3",
                   "asyncio", "multipart", "python_multipart")
"""Libraries whose INFO lines are chatter (one per HTTP request, per MQTT session): they log
at WARNING and above unless the log level is debug."""

SERVER_EXTRA_MODULES = frozenset({
    "fastapi", "uvicorn", "starlette", "sqlalchemy", "amqtt", "numpy", "scipy", "sklearn",
    "prometheus_client", "pydantic_settings", "kubernetes", "prometheus_api_client", "jwt",
    "matplotlib"})
"""Top-level modules of the ``server`` extra (pyproject.toml); the base install lacks them."""


def _setup_logging(level: str) -> None:
    """Root logging at ``level`` (debug, info, warning, error); library chatter
    (:data:`LIBRARY_LOGGERS`) only at WARNING and above unless ``level`` is debug."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if lvl <= logging.DEBUG else logging.WARNING)


@contextmanager
def _server_extra(command: str) -> Iterator[None]:
    """Around a server-only command's imports: a module of the ``server`` extra missing (a
    base install) ends the command with exit code 2 and the install command, not a
    traceback."""
    try:
        yield
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in SERVER_EXTRA_MODULES:
            raise
        err.print(f"continuum {command}: this command needs the server extra (module "
                  f"{e.name!r} is not installed): pip install 'continuum[server]'",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


# ---------------------------------------------------------------- server, demo


@app.command()
def server(
    host: Annotated[str, typer.Option(help="address to listen on", envvar="CONTINUUM_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on", envvar="CONTINUUM_PORT")] = 8080,
    state_dir: Annotated[Path, typer.Option(help="SQLite database and artifacts",
                                            envvar="CONTINUUM_STATE_DIR")] = Path("./state"),
    federation: Annotated[Path | None, typer.Option(
        help="federation YAML whose sites are registered at start", envvar="CONTINUUM_FEDERATION",
        exists=True, dir_okay=False)] = None,
    broker_url: Annotated[str, typer.Option(
        help="MQTT broker for device sites that name none", envvar="CONTINUUM_BROKER_URL")
    ] = "mqtt://127.0.0.1:1883",
    database_url: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL (default: SQLite in the state dir)", envvar="CONTINUUM_DATABASE_URL")
    ] = None,
    public_url: Annotated[str | None, typer.Option(
        help="URL agents use to reach this API for artifacts (default http(s)://HOST:PORT)",
        envvar="CONTINUUM_PUBLIC_URL")] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        help="PEM certificate to serve HTTPS with (with --tls-key)",
        envvar="CONTINUUM_TLS_CERT_FILE", exists=True, dir_okay=False)] = None,
    tls_key: Annotated[Path | None, typer.Option(
        help="PEM private key of --tls-cert", envvar="CONTINUUM_TLS_KEY_FILE", exists=True,
        dir_okay=False)] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Run the control plane: REST API, reconciler and adapters, until interrupted.

    Needs the server extra (pip install 'continuum[server]'). The port is bound before
    anything starts: a taken port is an error (exit 1) naming the process that holds it.
    """
    with _server_extra("server"):
        from control_plane.listen import PortInUse
        from control_plane.server import run_server
        from control_plane.settings import Settings
        from control_plane.store import SchemaMismatch

    _setup_logging(log_level)
    try:
        settings = Settings(host=host, port=port, state_dir=state_dir, federation=federation,
                            broker_url=broker_url, database_url=database_url,
                            public_url=public_url, tls_cert_file=tls_cert, tls_key_file=tls_key)
    except ValueError as e:  # pydantic's ValidationError is one
        err.print(f"continuum server: {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        run_server(settings)
    except PortInUse as e:
        err.print(f"continuum server: {e}; pass --port with a free port", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(1) from None
    except SchemaMismatch as e:
        err.print(f"continuum server: {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as e:
        err.print(f"continuum server: cannot listen on {host}:{port}: {e}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="leave everything running afterwards (Ctrl-C ends)")] = False,
    broker: Annotated[str | None, typer.Option(
        help="use this MQTT broker (mqtt://host:port) instead of the embedded one")] = None,
    port: Annotated[int | None, typer.Option(
        help="API port; default 8080, or any free port if 8080 is taken; 0 = any free port; "
        "a taken port given here ends the demo at once", show_default=False)] = None,
    state_dir: Annotated[Path | None, typer.Option(help="state directory (default: a new temp dir)")] = None,
    federation: Annotated[Path | None, typer.Option(help="federation YAML")] = None,
    workflows: Annotated[list[Path] | None, typer.Option(
        "--workflow", "-w", help="workflow files (default: examples/workflows/*.yaml)")] = None,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 600.0,
    log_level: Annotated[str, typer.Option(help="log level of the control plane")] = "warning",
) -> None:
    """Run the whole continuum on this machine and a real workflow through it.

    Starts the control plane (SQLite), an MQTT broker, two local device agents (a
    Raspberry-Pi-class and a Jetson-class profile) and the simulated edge, cloud and HPC
    sites of examples/federation.yaml; submits examples/workflows/*.yaml; shows live
    progress and every placement with its reasons; exits 0 when all succeeded. SIGTERM,
    SIGINT or SIGHUP stops everything it started. Needs the server extra.
    """
    with _server_extra("demo"):
        from control_plane.demo import Demo

    _setup_logging(log_level)
    code = Demo(console=console, keep=keep, broker_url=broker, port=port, state_dir=state_dir,
                federation=federation, workflows=workflows, timeout=timeout).run()
    raise typer.Exit(code)


# ---------------------------------------------------------------- workflows


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="workflow YAML or JSON", exists=True, dir_okay=False)],
    watch: Annotated[bool, typer.Option(help="follow progress until the workflow ends")] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Submit a workflow; with --watch, show progress and exit non-zero unless it succeeds."""
    c = _client(url)
    wf = _call(lambda: c.submit_file(file))
    console.print(f"workflow [bold]{wf['id']}[/bold] ({wf['name']}) accepted")
    if not watch:
        return
    try:
        with Live(console=console, refresh_per_second=4) as live:
            final = c.wait(wf["id"], on_update=lambda w: live.update(render.progress_table([w])))
    except (ApiError, ConnectionFailed, TimeoutError) as e:
        _fail(e)
    if not console.is_terminal:  # rich ends the last live frame with a newline on terminals only
        console.line()
    console.print(f"workflow {final['id']}: ", render.state(final["state"]), final.get("reason", ""))
    raise typer.Exit(0 if final["state"] == "Succeeded" else 1)


@app.command()
def cancel(workflow_id: Annotated[str, typer.Argument(help="workflow id")],
           url: UrlOpt = DEFAULT_URL) -> None:
    """Cancel a workflow: every run still placed or running is stopped on its backend."""
    wf = _call(lambda: _client(url).cancel(workflow_id))
    console.print(f"workflow {wf['id']}: ", render.state(wf["state"]))


# ---------------------------------------------------------------- get / describe


def _show(data: dict[str, object], table: Callable[[bool], RenderableType],
          output: Output) -> None:
    """Print ``data`` as ``output`` says; ``table(wide)`` renders it as a table."""
    if output == Output.json:
        if console.is_terminal:
            console.print_json(json.dumps(data))
        else:  # what print_json writes to a pipe, without its highlighting pass (minutes
            # for the JSON of 100k devices)
            console.file.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif output == Output.yaml:
        console.print(yaml.safe_dump(data, sort_keys=False), end="", markup=False,
                      highlight=False, soft_wrap=True)
    else:  # a table wider than the terminal (-o wide) wraps there rather than being cut
        t = table(output == Output.wide)
        out = console
        if output == Output.wide:
            need = console.measure(t, options=console.options.update_width(1000)).maximum
            out = console if need <= console.width else render.make_console(min_width=need)
        out.print(t, crop=False)


@get_app.command("workflows")
def get_workflows(state: Annotated[str | None, typer.Option(help="only this state")] = None,
                  limit: int = 50, url: UrlOpt = DEFAULT_URL,
                  output: OutOpt = Output.table) -> None:
    """List workflows, newest first."""
    data = _call(lambda: _client(url).workflows(state=state, limit=limit))
    _show(data, lambda wide: render.workflows_table(data["items"], wide), output)


@get_app.command("runs")
def get_runs(workflow: Annotated[str | None, typer.Option(help="only runs of this workflow")] = None,
             state: Annotated[str | None, typer.Option(help="only this state")] = None,
             url: UrlOpt = DEFAULT_URL, output: OutOpt = Output.table) -> None:
    """List runs, newest first."""
    data = _call(lambda: _client(url).runs(workflow=workflow, state=state))
    _show(data, lambda wide: render.runs_table(data["items"], wide), output)


LimitOpt = Annotated[int | None, typer.Option(
    min=1, help="list at most this many (default: all, fetched a page at a time)")]


def _more(data: dict[str, Any], output: Output) -> None:
    """Under a table cut short by ``--limit``: how many matched in all."""
    if data.get("next") and output in (Output.table, Output.wide):
        console.print(f"[dim]{len(data['items'])} of {data['total']} shown "
                      "(raise --limit for more)[/dim]")


@get_app.command("nodes")
def get_nodes(site: Annotated[str | None, typer.Option(help="only this site")] = None,
              tier: Annotated[str | None, typer.Option(help="device, edge, cloud or hpc")] = None,
              ready: Annotated[bool | None, typer.Option(
                  "--ready/--not-ready", help="only ready (or not ready) nodes")] = None,
              prefix: Annotated[str | None, typer.Option(
                  help="only nodes whose name starts with this")] = None,
              limit: LimitOpt = None,
              url: UrlOpt = DEFAULT_URL, output: OutOpt = Output.table) -> None:
    """List the nodes placement can choose from, in id order."""
    data = _call(lambda: _client(url).nodes(site=site, tier=tier, ready=ready, prefix=prefix,
                                            limit=limit))
    _show(data, lambda wide: render.nodes_table(data["items"], wide), output)
    _more(data, output)


@get_app.command("sites")
def get_sites(url: UrlOpt = DEFAULT_URL, output: OutOpt = Output.table) -> None:
    """List the sites of the federation with their health."""
    data = _call(lambda: _client(url).sites())
    _show(data, lambda wide: render.sites_table(data["items"], wide), output)


@get_app.command("devices")
def get_devices(site: Annotated[str | None, typer.Option(help="only this site")] = None,
                state: Annotated[str | None, typer.Option(
                    help="online, offline, lost or unknown")] = None,
                prefix: Annotated[str | None, typer.Option(
                    help="only devices whose id starts with this")] = None,
                limit: LimitOpt = None,
                url: UrlOpt = DEFAULT_URL, output: OutOpt = Output.table) -> None:
    """List the device agents with their last telemetry, in site/device order."""
    data = _call(lambda: _client(url).devices(site=site, state=state, prefix=prefix,
                                              limit=limit))
    _show(data, lambda wide: render.devices_table(data["items"], wide), output)
    _more(data, output)


@describe_app.command("run")
def describe_run(run_id: Annotated[str, typer.Argument(help="run id")],
                 tail: Annotated[int, typer.Option(help="output lines to show")] = 20,
                 url: UrlOpt = DEFAULT_URL, output: OutOpt = Output.table) -> None:
    """Explain a run's placement: per-plugin scores, predicted vs observed figures."""
    data = _call(lambda: _client(url).run(run_id, tail=tail))
    _show(data, lambda wide: render.explain_run(data), output)


@describe_app.command("workflow")
def describe_workflow(workflow_id: Annotated[str, typer.Argument(help="workflow id")],
                      url: UrlOpt = DEFAULT_URL, output: OutOpt = Output.table) -> None:
    """A workflow's tasks, runs and events."""
    data = _call(lambda: _client(url).workflow(workflow_id))
    if output in (Output.json, Output.yaml):
        _show(data, lambda wide: "", output)
        return
    console.print(render.progress_table([data]))
    for ev in data["events"]:
        console.print(f"[dim]{ev['at'][11:23]}[/dim] {ev['type']:<20} {ev['message']}")


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app(prog_name="continuum")


if __name__ == "__main__":
    main()
