"""``continuum-agent``: the device daemon's command line (argparse).

Every option of ``run`` and ``enroll`` may also come from the environment as
``CONTINUUM_AGENT_<NAME>`` (upper case, ``-`` → ``_``), e.g.
``CONTINUUM_AGENT_BROKER=mqtt://broker:1883``; list options (``--label``,
``--allow-command``) take space-separated values there, flags one of
``1/true/yes/on`` or ``0/false/no/off``; an empty variable counts as unset, and an option
given on the command line wins over its variable. A bad value, from either, exits 2
with a message naming the option (and the variable).

Why argparse of the standard library, not typer as the control plane's ``continuum``:
typer and what it loads cost an idle agent 2.2 MB of resident memory, and the base
install then needs neither typer nor rich (issue 16's lean agent, ``bench/agent_rss.sh``).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continuum.tier import Tier
from edge_agent.config import ENV_PREFIX, AgentConfig
from edge_agent.profiles import PROFILES, get_profile

PROG = "continuum-agent"
DESCRIPTION = ("The Continuum device agent: enrols this device with a Continuum control plane "
               "over MQTT (wire protocol v1), reports its capabilities and telemetry, and runs "
               "the tasks it is given as local processes.")
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
_METAVAR: dict[object, str] = {str: "TEXT", Path: "PATH", int: "INTEGER", float: "FLOAT",
                               list: "TEXT"}


class UsageError(Exception):
    """A bad option value; :func:`main` reports it as argparse does (usage, exit code 2)."""


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper().replace("-", "_")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class Option:
    """One option of a command: ``--{name}`` (``_`` → ``-``), its environment variable
    ``envvar`` and value ``type``: ``str``, ``Path``, ``int``, ``float``, ``bool`` (a flag)
    or ``list`` (repeatable; space-separated in the variable)."""

    name: str
    envvar: str
    help: str
    type: type = str
    default: Any = None
    required: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def from_env(self, raw: str) -> Any:
        """``raw`` (the variable's value) as this option's type.

        Raises:
            UsageError: not of the type; the message names the option and the variable.
        """
        if self.type is list:
            return raw.split()
        if self.type is bool:
            if raw.strip().lower() in _TRUE | _FALSE:
                return raw.strip().lower() in _TRUE
            raise UsageError(f"{self.flag} ({self.envvar}): {raw!r} is not one of "
                             "1/true/yes/on, 0/false/no/off")
        try:
            return self.type(raw)
        except ValueError:
            raise UsageError(f"{self.flag} ({self.envvar}): {raw!r} is not a valid "
                             f"{_METAVAR[self.type].lower()}") from None


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for o in options:
        text = o.help + ("" if o.default in (None, False, []) else f" [default: {o.default}]")
        if o.type is bool:
            parser.add_argument(o.flag, action="store_true", default=None, help=text)
        elif o.type is list:
            parser.add_argument(o.flag, action="append", metavar="TEXT", help=text)
        else:
            parser.add_argument(o.flag, type=o.type, metavar=_METAVAR[o.type],
                                help=text + (" (required)" if o.required else ""))


def _values(options: Sequence[Option], ns: argparse.Namespace,
            environ: Mapping[str, str]) -> dict[str, Any]:
    """Each option's value: the command line's, else its variable's (when set and not
    empty), else its default.

    Raises:
        UsageError: a variable's value is not of its option's type, or a required option
            has no value.
    """
    values: dict[str, Any] = {}
    for o in options:
        value = getattr(ns, o.name)
        if value is None and environ.get(o.envvar):
            value = o.from_env(environ[o.envvar])
        if value is None:
            if o.required:
                raise UsageError(f"{o.flag} (or {o.envvar}) is required")
            value = list(o.default) if isinstance(o.default, list) else o.default
        values[o.name] = value
    return values


def _env_epilog(options: Sequence[Option]) -> str:
    """The environment variable of every option, one per line, for a command's help."""
    lines = [f"  {o.flag:<22} {o.envvar}" for o in options]
    return ("Environment variables (list options take space-separated values):\n\n"
            + "\n".join(lines))


def _parse_labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"--label: label {item!r} must be key=value")
        labels[k] = v
    return labels


RUN_OPTIONS: tuple[Option, ...] = (
    Option("device_id", envvar=_env("device_id"),
           help="This device's id, used in its MQTT topics (letters, digits, '_', '.', '-'); "
           "default: the enrolled id (enrollment.json in --state-dir)."),
    Option("broker", envvar=_env("broker"),
           help="Broker URL: mqtt://host:port, or mqtts://host:port for TLS; default: the "
           "enrolled broker, else mqtt://127.0.0.1:1883."),
    Option("tls_ca", envvar=_env("tls_ca"), type=Path,
           help="CA certificate (PEM) of the broker; enables TLS; default: the CA enrolment "
           "stored."),
    Option("tls_insecure", envvar=_env("tls_insecure"), type=bool, default=False,
           help="Do not check the broker certificate's host name (testing only)."),
    Option("server_ca", envvar=_env("server_ca"), type=Path,
           help="CA certificate (PEM) of the control plane's https API, for artifact "
           "transfers; default: the one enrolment stored, else the system's."),
    Option("username", envvar=_env("username"), help="Broker user name."),
    Option("password", envvar=_env("password"),
           help="Broker password (prefer the environment variable)."),
    Option("location", envvar=_env("location"), default="unknown",
           help="Location name known to the control plane's topology."),
    Option("tier", envvar=_env("tier"), default="device",
           help="Tier of this node: device, edge, cloud or hpc."),
    Option("label", envvar=_env("label"), type=list, default=[],
           help="Node label key=value (repeatable); placement constraints match on them."),
    Option("rtt_peer", envvar=_env("rtt_peer"), type=list, default=[],
           help="Measure the round trip to a peer with each telemetry: location=host:port "
           "(repeatable; TCP connect time). The broker's RTT is always measured."),
    Option("profile", envvar=_env("profile"),
           help="Declare a device profile instead of this host's figures: "
           + ", ".join(["host", *sorted(PROFILES)]) + ". Hello then says emulated=true."),
    Option("state_dir", envvar=_env("state_dir"), type=Path,
           default=Path("/var/lib/continuum-agent"),
           help="Directory for run working dirs, the artifact cache and the outbox database."),
    Option("telemetry_interval", envvar=_env("telemetry_interval"), type=float, default=5.0,
           help="Seconds between telemetry messages (also the heartbeat)."),
    Option("allow_command", envvar=_env("allow_command"), type=list, default=[],
           help="Allowed command prefix, e.g. 'python3' or '/usr/bin/env python3' "
           "(repeatable; the program is compared after resolving it on the PATH and through "
           "symlinks, the rest token by token; none = allow all). Allowing an interpreter "
           "allows any code."),
    Option("command_key", envvar=_env("command_key"),
           help="The control plane's command key (Ed25519 public key: base64 of the raw 32 "
           "bytes, PEM, or a file holding either). Default: commandKey of "
           "<state-dir>/enrollment.json, written by 'continuum-agent enroll'."),
    Option("insecure_accept_unsigned", envvar=_env("insecure_accept_unsigned"), type=bool,
           default=False,
           help="Obey commands without a valid signature: anyone who can publish on this "
           "device's commands topic runs anything. Testing only."),
    Option("run_as", envvar=_env("run_as"),
           help="User that tasks run as. Default: 'continuum-run' when the agent runs as root "
           "(create it: useradd --system --no-create-home --shell /usr/sbin/nologin "
           "continuum-run), else the agent's own user. 'root' only when said explicitly."),
    Option("limit_cpu_seconds", envvar=_env("limit_cpu_seconds"), type=int,
           help="CPU seconds a task process may use (RLIMIT_CPU; default unlimited)."),
    Option("limit_address_space", envvar=_env("limit_address_space"), type=int,
           help="Virtual memory of a task process, bytes (RLIMIT_AS; default unlimited)."),
    Option("limit_open_files", envvar=_env("limit_open_files"), type=int, default=1024,
           help="Open files of a task process (RLIMIT_NOFILE)."),
    Option("limit_processes", envvar=_env("limit_processes"), type=int, default=512,
           help="Processes of the run user in all (RLIMIT_NPROC; not enforced for root)."),
    Option("max_cpu", envvar=_env("max_cpu"), type=float,
           help="Refuse runs requesting more cores (default: all)."),
    Option("max_memory", envvar=_env("max_memory"), type=int,
           help="Refuse runs requesting more memory, bytes (default: all)."),
    Option("kill_grace", envvar=_env("kill_grace"), type=float, default=5.0,
           help="Seconds between SIGTERM and SIGKILL on cancel or timeout."),
    Option("upload_deadline", envvar=_env("upload_deadline"), type=float, default=300.0,
           help="Seconds an output upload keeps retrying before the run fails."),
    Option("reconnect_max", envvar=_env("reconnect_max"), type=float, default=30.0,
           help="Longest wait (s) between reconnect attempts (jittered exponential backoff)."),
    Option("log_level", envvar=_env("log_level"), default="INFO",
           help="DEBUG, INFO, WARNING or ERROR."),
)


def run(*, device_id: str | None, broker: str | None, tls_ca: Path | None,
        tls_insecure: bool, server_ca: Path | None, username: str | None,
        password: str | None, location: str, tier: str, label: list[str],
        rtt_peer: list[str], profile: str | None, state_dir: Path,
        telemetry_interval: float, allow_command: list[str], command_key: str | None,
        insecure_accept_unsigned: bool, run_as: str | None, limit_cpu_seconds: int | None,
        limit_address_space: int | None, limit_open_files: int, limit_processes: int,
        max_cpu: float | None, max_memory: int | None, kill_grace: float,
        upload_deadline: float, reconnect_max: float, log_level: str) -> None:
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
        _say(f"continuum-agent: {e}")
        raise SystemExit(2) from e
    if enrolled is not None:
        if device_id is not None and device_id != enrolled.device_id:
            _say(f"continuum-agent: --device-id {device_id} differs from the enrolled "
                  f"device {enrolled.device_id} ({state_dir}/enrollment.json)")
            raise SystemExit(2)
        device_id = enrolled.device_id
        broker = broker or enrolled.broker_url
        username = username or enrolled.username
        password = password or enrolled.password
        tls_ca = tls_ca or ca_path(state_dir)
        server_ca = server_ca or server_ca_path(state_dir)
    if device_id is None:
        _say("continuum-agent: --device-id is required (or enrol first: "
             "continuum-agent enroll --server URL --token T)")
        raise SystemExit(2)
    try:
        config = AgentConfig(
            broker=broker or "mqtt://127.0.0.1:1883", tls_ca=tls_ca, tls_insecure=tls_insecure,
            server_ca=server_ca,
            username=username,
            password=password, device_id=device_id, location=location, tier=Tier(tier),
            labels=_parse_labels(label), rtt_peers=rtt_peer, profile=profile,
            state_dir=state_dir,
            telemetry_interval=telemetry_interval, allow_command=allow_command,
            max_cpu=max_cpu, max_memory=max_memory, kill_grace=kill_grace,
            upload_deadline=upload_deadline, reconnect_max=reconnect_max,
            command_key=command_key, insecure_accept_unsigned=insecure_accept_unsigned,
            run_as=run_as, limit_cpu_seconds=limit_cpu_seconds,
            limit_address_space=limit_address_space, limit_open_files=limit_open_files,
            limit_processes=limit_processes,
        )
        prof = get_profile(config.profile)
        key = config.command_public_key()
    except ValueError as e:
        _say(f"continuum-agent: invalid configuration: {e}")
        raise SystemExit(2) from e
    if key is None and not config.insecure_accept_unsigned:
        _say("continuum-agent: no command key: enrol this device ('continuum-agent "
             "enroll'), or pass --command-key (the control plane prints it: 'python -m "
             "control_plane.keys STATE_DIR'), or --insecure-accept-unsigned to obey "
             "anyone (testing only)")
        raise SystemExit(2)
    from edge_agent.agent import Agent

    try:
        agent = Agent(config, prof)
    except ValueError as e:
        _say(f"continuum-agent: {e}")
        raise SystemExit(2) from e

    def _term(signum: int, frame: object) -> None:
        agent.request_stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    agent.start()
    agent.wait()
    agent.stop()


ENROLL_OPTIONS: tuple[Option, ...] = (
    Option("server", envvar=_env("server"), required=True,
           help="The control plane's API URL, e.g. https://cp:8080."),
    Option("token", envvar=_env("token"), required=True,
           help="One-time enrolment token (continuum devices token SITE --tenant T)."),
    Option("device_id", envvar=_env("device_id"),
           help="This device's id (default: the host name)."),
    Option("state_dir", envvar=_env("state_dir"), type=Path,
           default=Path("/var/lib/continuum-agent"),
           help="Where enrollment.json (0600) is stored."),
    Option("server_ca", envvar=_env("server_ca"), type=Path,
           help="CA bundle of an https API (default: the system's)."),
)


def enroll(*, server: str, token: str, device_id: str | None, state_dir: Path,
           server_ca: Path | None) -> None:
    """Exchange an enrolment token for this device's broker credentials and the broker's
    CA; `continuum-agent run --state-dir DIR` then uses them."""
    import socket

    from edge_agent.config import _DEVICE_ID
    from edge_agent.enrollment import EnrollmentError
    from edge_agent.enrollment import enroll as do_enroll

    device_id = device_id or socket.gethostname().split(".")[0]
    if not _DEVICE_ID.match(device_id):
        raise UsageError(f"--device-id: {device_id!r}: 1-63 letters, digits, '_', '.' or '-'")
    try:
        e = do_enroll(server, token, device_id, state_dir, server_ca=server_ca)
    except EnrollmentError as err:
        _say(f"continuum-agent: {err}")
        raise SystemExit(1) from err
    print(f"enrolled device {e.device_id} in site {e.site} (tenant {e.tenant}); "
          f"broker {e.broker_url}; credentials in {state_dir / 'enrollment.json'}")


def profiles() -> None:
    """List the device profiles --profile accepts, with their declared figures."""
    for name in ["host", *sorted(PROFILES)]:
        p = get_profile(name)
        print(f"{name:12} {p.cpus:g} cores  {p.memory / 2**30:.1f} GiB  {p.arch:8} "
              f"{p.power.idle_watts:g}-{p.power.max_watts:g} W  speed {p.speed:g}  "
              f"{p.description}")


COMMANDS: dict[str, tuple[Callable[..., None], tuple[Option, ...]]] = {
    "run": (run, RUN_OPTIONS),
    "enroll": (enroll, ENROLL_OPTIONS),
    "profiles": (profiles, ()),
}
"""Each command's function and options (the function takes every option by name)."""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line's parser and each command's own."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for name, (fn, options) in COMMANDS.items():
        doc = inspect.cleandoc(fn.__doc__ or "")
        commands[name] = sub.add_parser(
            name, help=doc.split("\n\n")[0].replace("\n", " "), description=doc,
            usage=f"{PROG} {name}" + (" [OPTIONS]" if options else ""),
            epilog=_env_epilog(options) if options else None,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_options(commands[name], options)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: parse ``argv`` (default ``sys.argv[1:]``) and run the
    command; exits 2 on a usage error (message on stderr), as argparse does."""
    parser, commands = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        raise SystemExit(2)
    fn, options = COMMANDS[ns.command]
    try:
        fn(**_values(options, ns, os.environ))
    except UsageError as e:
        commands[ns.command].error(str(e))


if __name__ == "__main__":
    main()
