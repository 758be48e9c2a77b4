"""``continuum-agent``: the device daemon's command line (typer).

Every option of ``run`` may also come from the environment as ``CONTINUUM_AGENT_<NAME>``
(upper case, ``-`` → ``_``), e.g. ``CONTINUUM_AGENT_BROKER=mqtt://broker:1883``; list
options (``--label``, ``--allow-command``) take space-separated values there.
"""

from __future__ import annotations

import logging
import signal
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from continuum.base import Tier
from edge_agent.config import ENV_PREFIX, AgentConfig
from edge_agent.profiles import PROFILES, get_profile

app = typer.Typer(
    name="continuum-agent",
    help="The Continuum device agent: enrols this device with a Continuum control plane "
    "over MQTT (wire protocol v1), reports its capabilities and telemetry, and runs the "
    "tasks it is given as local processes.",
    no_args_is_help=True,
    add_completion=False,
)


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper().replace("-", "_")


def _parse_labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"label {item!r} must be key=value", param_hint="--label")
        labels[k] = v
    return labels


@app.command()
def run(
    device_id: Annotated[str | None, typer.Option(
        "--device-id", show_envvar=False, envvar=_env("device_id"),
        help="This device's id, used in its MQTT topics (letters, digits, '_', '.', '-'); "
        "default: the enrolled id (enrollment.json in --state-dir).")] = None,
    broker: Annotated[str | None, typer.Option(
        show_envvar=False, envvar=_env("broker"),
        help="Broker URL: mqtt://host:port, or mqtts://host:port for TLS; default: the "
        "enrolled broker, else mqtt://127.0.0.1:1883.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        show_envvar=False, envvar=_env("tls_ca"), help="CA certificate (PEM) of the broker; enables TLS; "
        "default: the CA enrolment stored.")] = None,
    tls_insecure: Annotated[bool, typer.Option(
        show_envvar=False, envvar=_env("tls_insecure"),
        help="Do not check the broker certificate's host name (testing only).")] = False,
    server_ca: Annotated[Path | None, typer.Option(
        show_envvar=False, envvar=_env("server_ca"),
        help="CA certificate (PEM) of the control plane's https API, for artifact "
        "transfers; default: the one enrolment stored, else the system's.")] = None,
    username: Annotated[str | None, typer.Option(
        show_envvar=False, envvar=_env("username"), help="Broker user name.")] = None,
    password: Annotated[str | None, typer.Option(
        show_envvar=False, envvar=_env("password"),
        help="Broker password (prefer the environment variable).")]
        = None,
    location: Annotated[str, typer.Option(
        show_envvar=False, envvar=_env("location"),
        help="Location name known to the control plane's topology.")]
        = "unknown",
    tier: Annotated[str, typer.Option(
        show_envvar=False, envvar=_env("tier"),
        help="Tier of this node: device, edge, cloud or hpc.")] = "device",
    label: Annotated[list[str] | None, typer.Option(
        "--label", show_envvar=False, envvar=_env("label"),
        help="Node label key=value (repeatable); placement constraints match on them.")] = None,
    rtt_peer: Annotated[list[str] | None, typer.Option(
        "--rtt-peer", show_envvar=False, envvar=_env("rtt_peer"),
        help="Measure the round trip to a peer with each telemetry: location=host:port "
        "(repeatable; TCP connect time). The broker's RTT is always measured.")] = None,
    profile: Annotated[str | None, typer.Option(
        show_envvar=False, envvar=_env("profile"),
        help="Declare a device profile instead of this host's figures: "
        + ", ".join(["host", *sorted(PROFILES)]) + ". Hello then says emulated=true.")] = None,
    state_dir: Annotated[Path, typer.Option(
        show_envvar=False, envvar=_env("state_dir"),
        help="Directory for run working dirs, the artifact cache and the outbox database.")]
        = Path("/var/lib/continuum-agent"),
    telemetry_interval: Annotated[float, typer.Option(
        show_envvar=False, envvar=_env("telemetry_interval"),
        help="Seconds between telemetry messages (also the heartbeat).")] = 5.0,
    allow_command: Annotated[list[str] | None, typer.Option(
        "--allow-command", show_envvar=False, envvar=_env("allow_command"),
        help="Allowed command prefix, e.g. 'python3' or '/usr/bin/env python3' "
        "(repeatable; the program is compared after resolving it on the PATH and through "
        "symlinks, the rest token by token; none = allow all). Allowing an interpreter "
        "allows any code.")] = None,
    command_key: Annotated[str | None, typer.Option(
        envvar=_env("command_key"),
        help="The control plane's command key (Ed25519 public key: base64 of the raw 32 "
        "bytes, PEM, or a file holding either). Default: commandKey of "
        "<state-dir>/enrollment.json, written by 'continuum-agent enroll'.")] = None,
    insecure_accept_unsigned: Annotated[bool, typer.Option(
        envvar=_env("insecure_accept_unsigned"),
        help="Obey commands without a valid signature: anyone who can publish on this "
        "device's commands topic runs anything. Testing only.")] = False,
    run_as: Annotated[str | None, typer.Option(
        envvar=_env("run_as"),
        help="User that tasks run as. Default: 'continuum-run' when the agent runs as root "
        "(create it: useradd --system --no-create-home --shell /usr/sbin/nologin "
        "continuum-run), else the agent's own user. 'root' only when said explicitly.")]
        = None,
    limit_cpu_seconds: Annotated[int | None, typer.Option(
        envvar=_env("limit_cpu_seconds"),
        help="CPU seconds a task process may use (RLIMIT_CPU; default unlimited).")] = None,
    limit_address_space: Annotated[int | None, typer.Option(
        envvar=_env("limit_address_space"),
        help="Virtual memory of a task process, bytes (RLIMIT_AS; default unlimited).")]
        = None,
    limit_open_files: Annotated[int, typer.Option(
        envvar=_env("limit_open_files"),
        help="Open files of a task process (RLIMIT_NOFILE).")] = 1024,
    limit_processes: Annotated[int, typer.Option(
        envvar=_env("limit_processes"),
        help="Processes of the run user in all (RLIMIT_NPROC; not enforced for root).")]
        = 512,
    max_cpu: Annotated[float | None, typer.Option(
        show_envvar=False, envvar=_env("max_cpu"), help="Refuse runs requesting more cores (default: all).")]
        = None,
    max_memory: Annotated[int | None, typer.Option(
        show_envvar=False, envvar=_env("max_memory"),
        help="Refuse runs requesting more memory, bytes (default: all).")] = None,
    kill_grace: Annotated[float, typer.Option(
        show_envvar=False, envvar=_env("kill_grace"),
        help="Seconds between SIGTERM and SIGKILL on cancel or timeout.")] = 5.0,
    upload_deadline: Annotated[float, typer.Option(
        show_envvar=False, envvar=_env("upload_deadline"),
        help="Seconds an output upload keeps retrying before the run fails.")] = 300.0,
    reconnect_max: Annotated[float, typer.Option(
        show_envvar=False, envvar=_env("reconnect_max"),
        help="Longest wait (s) between reconnect attempts (jittered exponential backoff).")]
        = 30.0,
    log_level: Annotated[str, typer.Option(
        show_envvar=False, envvar=_env("log_level"), help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Connect to the broker and serve this device until SIGTERM/SIGINT.

    After ``continuum-agent enroll`` the device id, broker, user name, password and CA
    come from ``<state-dir>/enrollment.json``; options given explicitly win."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from edge_agent.enrollment import EnrollmentError, ca_path, load, server_ca_path

    try:
        enrolled = load(state_dir)
    except EnrollmentError as e:
        typer.echo(f"continuum-agent: {e}", err=True)
        raise typer.Exit(2) from e
    if enrolled is not None:
        if device_id is not None and device_id != enrolled.device_id:
            typer.echo(f"continuum-agent: --device-id {device_id} differs from the enrolled "
                       f"device {enrolled.device_id} ({state_dir}/enrollment.json)", err=True)
            raise typer.Exit(2)
        device_id = enrolled.device_id
        broker = broker or enrolled.broker_url
        username = username or enrolled.username
        password = password or enrolled.password
        tls_ca = tls_ca or ca_path(state_dir)
        server_ca = server_ca or server_ca_path(state_dir)
    if device_id is None:
        typer.echo("continuum-agent: --device-id is required (or enrol first: "
                   "continuum-agent enroll --server URL --token T)", err=True)
        raise typer.Exit(2)
    try:
        config = AgentConfig(
            broker=broker or "mqtt://127.0.0.1:1883", tls_ca=tls_ca, tls_insecure=tls_insecure,
            server_ca=server_ca,
            username=username,
            password=password, device_id=device_id, location=location, tier=Tier(tier),
            labels=_parse_labels(label or []), rtt_peers=rtt_peer or [], profile=profile,
            state_dir=state_dir,
            telemetry_interval=telemetry_interval, allow_command=allow_command or [],
            max_cpu=max_cpu, max_memory=max_memory, kill_grace=kill_grace,
            upload_deadline=upload_deadline, reconnect_max=reconnect_max,
            command_key=command_key, insecure_accept_unsigned=insecure_accept_unsigned,
            run_as=run_as, limit_cpu_seconds=limit_cpu_seconds,
            limit_address_space=limit_address_space, limit_open_files=limit_open_files,
            limit_processes=limit_processes,
        )
        prof = get_profile(config.profile)
        key = config.command_public_key()
    except (ValidationError, ValueError) as e:
        typer.echo(f"continuum-agent: invalid configuration: {e}", err=True)
        raise typer.Exit(2) from e
    if key is None and not config.insecure_accept_unsigned:
        typer.echo("continuum-agent: no command key: enrol this device ('continuum-agent "
                   "enroll'), or pass --command-key (the control plane prints it: 'python -m "
                   "control_plane.keys STATE_DIR'), or --insecure-accept-unsigned to obey "
                   "anyone (testing only)", err=True)
        raise typer.Exit(2)
    from edge_agent.agent import Agent

    try:
        agent = Agent(config, prof)
    except ValueError as e:
        typer.echo(f"continuum-agent: {e}", err=True)
        raise typer.Exit(2) from e

    def _term(signum: int, frame: object) -> None:
        agent.request_stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    agent.start()
    agent.wait()
    agent.stop()


def _env_epilog(fn: Callable[..., Any]) -> str:
    """The environment variable of every option of ``fn``, one per line, for its help's
    epilog; the options table leaves them out (``show_envvar=False``: it has no room for
    them at 80 columns and cut them to ``CONTINUUM_AGENT_D…``)."""
    lines = []
    for name, hint in typing.get_type_hints(fn, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, typer.models.OptionInfo) and isinstance(meta.envvar, str):
                flag = next((d for d in meta.param_decls or () if d.startswith("--")),
                            "--" + name.replace("_", "-"))
                lines.append(f"  {flag:<22} {meta.envvar}")
    return ("Environment variables (list options take space-separated values):\n\n"
            + "\n".join(lines))


app.registered_commands[-1].epilog = _env_epilog(run)


@app.command()
def enroll(
    server: Annotated[str, typer.Option(
        show_envvar=False, envvar=_env("server"),
        help="The control plane's API URL, e.g. https://cp:8080.")],
    token: Annotated[str, typer.Option(
        show_envvar=False, envvar=_env("token"),
        help="One-time enrolment token (continuum devices token SITE --tenant T).")],
    device_id: Annotated[str | None, typer.Option(
        "--device-id", show_envvar=False, envvar=_env("device_id"),
        help="This device's id (default: the host name).")] = None,
    state_dir: Annotated[Path, typer.Option(
        show_envvar=False, envvar=_env("state_dir"),
        help="Where enrollment.json (0600) is stored.")]
        = Path("/var/lib/continuum-agent"),
    server_ca: Annotated[Path | None, typer.Option(
        show_envvar=False, envvar=_env("server_ca"),
        help="CA bundle of an https API (default: the system's).")]
        = None,
) -> None:
    """Exchange an enrolment token for this device's broker credentials and the broker's
    CA; `continuum-agent run --state-dir DIR` then uses them."""
    import socket

    from edge_agent.config import _DEVICE_ID
    from edge_agent.enrollment import EnrollmentError
    from edge_agent.enrollment import enroll as do_enroll

    device_id = device_id or socket.gethostname().split(".")[0]
    if not _DEVICE_ID.match(device_id):
        raise typer.BadParameter(f"{device_id!r}: 1-63 letters, digits, '_', '.' or '-'",
                                 param_hint="--device-id")
    try:
        e = do_enroll(server, token, device_id, state_dir, server_ca=server_ca)
    except EnrollmentError as err:
        typer.echo(f"continuum-agent: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"enrolled device {e.device_id} in site {e.site} (tenant {e.tenant}); "
               f"broker {e.broker_url}; credentials in {state_dir / 'enrollment.json'}")


app.registered_commands[-1].epilog = _env_epilog(enroll)


@app.command()
def profiles() -> None:
    """List the device profiles --profile accepts, with their declared figures."""
    for name in ["host", *sorted(PROFILES)]:
        p = get_profile(name)
        typer.echo(f"{name:12} {p.cpus:g} cores  {p.memory / 2**30:.1f} GiB  {p.arch:8} "
                   f"{p.power.idle_watts:g}-{p.power.max_watts:g} W  speed {p.speed:g}  "
                   f"{p.description}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
