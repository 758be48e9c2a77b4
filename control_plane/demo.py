"""``continuum demo``: the whole continuum on one machine, and real work through it.

What it starts, in this order:

1. an MQTT broker — the embedded amqtt one on a free loopback port, unless
   ``broker_url`` names an existing broker (the test suite passes a real Mosquitto).
   The embedded one refuses anonymous clients and knows three users with fresh random
   passwords (:func:`control_plane.broker.demo_auth`; Argon2 hashes in
   ``<state_dir>/broker.passwd``, 0600): the control plane (``broker_control_user``,
   reading and writing every device topic; the fleet site's ``username``/``password``
   are set to it) and each agent (its device id, given to it in
   ``CONTINUUM_AGENT_USERNAME``/``CONTINUUM_AGENT_PASSWORD``, never on its command line),
   publishing only under its own topics and reading only its own ``commands``;
2. the control plane on 127.0.0.1 with SQLite in a fresh state directory, the sites of
   ``examples/federation.yaml`` (the simulated edge, cloud and HPC sites, and the
   device fleet);
3. two ``continuum-agent`` processes with different device profiles (``pi-camera-1``,
   a Raspberry Pi 4 profile labelled ``role=camera``; ``jetson-1``, a Jetson Nano
   profile labelled ``accelerator=nvidia-maxwell``), at the fleet's location, trusting
   the control plane's command key (``--command-key``, read from its state directory).
   Their tasks run as the demo's own user; a demo started as root says so and passes
   ``--run-as root`` (the demo's Python lives where an unprivileged user may not reach).

The control plane writes its bootstrap admin token to ``<state_dir>/admin.token``; the
demo uses it and prints how to (``export CONTINUUM_TOKEN=$(cat STATE/admin.token)``).
Then it submits every workflow through the REST API, shows live progress, prints every
placement with its reasons and predicted vs observed figures, and returns 0 when every
workflow succeeded.

The API port is bound before anything starts: the default port 8080, or any free port when
8080 is taken; an explicit port that is taken ends the demo at once. SIGTERM, SIGINT and
SIGHUP stop the agents, the API, the control plane and the broker; on Linux the agents also
get SIGTERM from the kernel if the demo dies without cleaning up (even by SIGKILL).
"""

from __future__ import annotations

import base64
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from rich.console import Console
from rich.live import Live

from continuum.federation import FederationDocument, load_federation
from continuum.model import SiteKind
from continuum.units import format_bytes, format_duration
from control_plane import listen, render
from control_plane.broker import BrokerAuth, EmbeddedBroker, demo_auth
from control_plane.client import TERMINAL_WORKFLOW_STATES, Client
from control_plane.keys import command_public_key
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from edge_agent.config import ENV_PREFIX

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

AGENTS: tuple[dict[str, Any], ...] = (
    {"device_id": "pi-camera-1", "profile": "pi4", "labels": ["role=camera"]},
    {"device_id": "jetson-1", "profile": "jetson-nano", "labels": ["accelerator=nvidia-maxwell"]},
)


DEFAULT_PORT = 8080
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Interrupted(BaseException):
    """A signal asked the demo to stop; ``signum`` says which. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _die_with_parent(parent: int) -> None:
    """Run in an agent before exec (Linux): the kernel sends it SIGTERM when the demo dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the demo died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Demo:
    """One demo session; :meth:`run` returns the process exit code."""

    def __init__(self, console: Console, *, keep: bool = False, broker_url: str | None = None,
                 port: int | None = None, state_dir: Path | None = None,
                 federation: Path | None = None, workflows: list[Path] | None = None,
                 timeout: float = 600.0):
        """``port``: None = 8080, or any free port if 8080 is taken; 0 = any free port; any
        other number must be free (:meth:`run` fails at once if it is not)."""
        self.console = console
        self.keep = keep
        self.broker_url = broker_url
        self.requested_port = port
        self.port = DEFAULT_PORT if port is None else port
        self._sock: socket.socket | None = None
        self._stopping = False
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="continuum-demo-"))
        self.federation = federation or EXAMPLES / "federation.yaml"
        self.workflows = workflows or sorted((EXAMPLES / "workflows").glob("*.yaml"))
        self.timeout = timeout
        self._agents: list[subprocess.Popen[bytes]] = []
        self._broker: EmbeddedBroker | None = None
        self._broker_auth: BrokerAuth | None = None
        """The embedded broker's users (None: an external broker, used as given)."""
        self._server: uvicorn.Server | None = None
        self._api: threading.Thread | None = None
        self._cp: ControlPlane | None = None
        self.results: list[dict[str, Any]] = []
        """The final state of every submitted workflow (as ``GET /v1/workflows/{id}``)."""

    # ------------------------------------------------------------ start and stop

    def _bind(self) -> None:
        """Bind the API port (see ``port`` in the constructor).

        Raises:
            listen.PortInUse: an explicitly requested port is taken.
        """
        if self.requested_port is None:
            try:
                self._sock = listen.bind("127.0.0.1", DEFAULT_PORT)
            except listen.PortInUse as e:
                self.console.print(f"[yellow]port {e.port} is already in use"
                                   + (f" by {e.holder}" if e.holder else "")
                                   + "; the demo's API takes a free port instead[/yellow]",
                                   highlight=False)
                self._sock = listen.bind("127.0.0.1", 0)
        else:
            self._sock = listen.bind("127.0.0.1", self.requested_port)
        self.port = int(self._sock.getsockname()[1])

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self._stopping:  # a second signal while stopping does not cut the clean-up short
            self._stopping = True
            raise Interrupted(signum)

    def _say_stopping(self, e: BaseException) -> int:
        """Say which signal stops the demo; returns its number."""
        signum = e.signum if isinstance(e, Interrupted) else int(signal.SIGINT)
        self.console.print(f"{signal.Signals(signum).name}: stopping the agents, the control "
                           "plane and the broker")
        return signum

    def _start(self) -> Client:
        say = self.console.print
        fed = load_federation(self.federation)
        fleet = next(s for s in fed.spec.sites if s.kind == SiteKind.devices)
        settings = Settings(state_dir=self.state_dir, port=self.port,
                            reconcile_interval_s=0.5, inventory_interval_s=1.0)
        if self.broker_url is None:
            control = settings.broker_control_user
            self._broker_auth = demo_auth([a["device_id"] for a in AGENTS], control)
            self._broker = EmbeddedBroker(auth=self._broker_auth,
                                          password_file=self.state_dir / "broker.passwd")
            self._broker.start()
            self.broker_url = self._broker.url
            fed = with_site_credentials(fed, fleet.name, control,
                                        self._broker_auth.users[control].password,
                                        sharedSubscriptions=False)  # amqtt: MQTT 3.1.1 only
            say(f"[bold]broker[/bold]        embedded amqtt on {self.broker_url} (users "
                f"{', '.join(self._broker_auth.users)}; no anonymous clients)")
        else:
            say(f"[bold]broker[/bold]        {self.broker_url}")
        settings = settings.model_copy(update={"broker_url": self.broker_url})
        self._cp = ControlPlane(settings, fed)
        self._cp.start()
        config = uvicorn.Config(self._cp.app, host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._api = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                     name="api", daemon=True)
        self._api.start()
        token_path = self._cp.admin_token_path
        client = Client(f"http://127.0.0.1:{self.port}", token=token_path.read_text().strip())
        _wait(client.ready, 30, "the control plane API")
        say(f"[bold]control plane[/bold] http://127.0.0.1:{self.port}  (API docs /docs, "
            f"state {self.state_dir})")
        say(f"[bold]admin token[/bold]   export CONTINUUM_TOKEN=$(cat {token_path})",
            highlight=False, soft_wrap=True)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        die_with_parent = (functools.partial(_die_with_parent, os.getpid())
                           if sys.platform.startswith("linux") else None)
        key = base64.b64encode(command_public_key(self.state_dir)).decode()
        as_root = ["--run-as", "root"] if os.geteuid() == 0 else []
        if as_root:
            say("[yellow]running as root: the demo's agents run their tasks as root "
                "(--run-as root)[/yellow]")
        for a in AGENTS:
            cmd = [sys.executable, "-m", "edge_agent.cli", "run", "--device-id", a["device_id"],
                   "--broker", self.broker_url, "--profile", a["profile"],
                   "--location", fleet.location or "", "--telemetry-interval", "2",
                   "--state-dir", str(self.state_dir / "agents" / a["device_id"]),
                   "--command-key", key, *as_root]
            for label in a["labels"]:
                cmd += ["--label", label]
            agent_env = env
            if self._broker_auth is not None:  # in the environment: not in `ps` output
                agent_env = {**env, f"{ENV_PREFIX}USERNAME": a["device_id"],
                             f"{ENV_PREFIX}PASSWORD": self._broker_auth.users[a["device_id"]].password}
            log = open(self.state_dir / f"agent-{a['device_id']}.log", "wb")  # noqa: SIM115
            self._agents.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                 env=agent_env, preexec_fn=die_with_parent))
            say(f"[bold]agent[/bold]         {a['device_id']} (profile {a['profile']}, "
                f"{' '.join(a['labels'])}) pid {self._agents[-1].pid}")

        def agents_online() -> bool:
            for p in self._agents:
                if p.poll() is not None:
                    raise RuntimeError(f"agent pid {p.pid} exited with {p.returncode}; "
                                       f"see {self.state_dir}/agent-*.log")
            nodes = client.nodes(site=fleet.name)["items"]
            return sum(1 for n in nodes if n.get("ready")) >= len(AGENTS)

        _wait(agents_online, 60, "both device agents to come online")
        self.console.print(render.sites_table(client.sites()["items"]))
        self.console.print(render.nodes_table(client.nodes()["items"]))
        return client

    def stop(self) -> None:
        """Stop the agents (SIGTERM, SIGKILL after 10 s), the API, the control plane and the
        embedded broker."""
        self._stopping = True
        for p in self._agents:
            if p.poll() is None:
                p.terminate()
        for p in self._agents:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if self._server is not None:
            self._server.should_exit = True
            if self._api is not None:
                self._api.join(10)  # before its socket is closed below
        if self._cp is not None:
            self._cp.stop()
        if self._broker is not None:
            self._broker.stop()
        if self._sock is not None:
            self._sock.close()

    # ------------------------------------------------------------ the run

    def run(self) -> int:
        """Run the demo; returns 0 when every workflow succeeded, 1 when one did not or the
        demo could not start (e.g. its explicit port is taken), 128 + N after signal N."""
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._bind()
            client = self._start()
            ids = []
            for path in self.workflows:
                wf = client.submit_file(path)
                ids.append(wf["id"])
                self.console.print(f"submitted [bold]{path.name}[/bold] → workflow {wf['id']}")
            deadline = time.monotonic() + self.timeout
            with Live(console=self.console, refresh_per_second=4, transient=False) as live:
                while True:
                    wfs = [client.workflow(i) for i in ids]
                    live.update(render.progress_table(wfs))
                    if all(w["state"] in TERMINAL_WORKFLOW_STATES for w in wfs):
                        break
                    if time.monotonic() > deadline:
                        self.console.print(f"[red]timed out after {self.timeout:.0f}s[/red]")
                        break
                    time.sleep(0.5)
            if not self.console.is_terminal:  # rich ends the last frame so on terminals only
                self.console.line()
            self.results = wfs
            for wf in wfs:
                self._report(wf)
            ok = all(w["state"] == "Succeeded" for w in wfs)
            self.console.print("[green]all workflows succeeded[/green]" if ok
                                else "[red]some workflows did not succeed[/red]")
            if self.keep:
                self.console.print(f"everything stays up: http://127.0.0.1:{self.port}/docs — "
                                   "Ctrl-C to stop")
                try:
                    while True:
                        time.sleep(3600)
                except (Interrupted, KeyboardInterrupt) as e:
                    self._say_stopping(e)
            return 0 if ok else 1
        except (RuntimeError, TimeoutError, OSError) as e:
            hint = ("; pass --port 0 (any free port) or another port"
                    if isinstance(e, listen.PortInUse) else "")
            # one line, never wrapped by rich: the hint's flag stays copyable whatever the
            # length of the message before it (e.g. the command line holding the port)
            self.console.print(f"[red]demo failed:[/red] {e}{hint}", highlight=False,
                               soft_wrap=True)
            return 1
        except (Interrupted, KeyboardInterrupt) as e:
            return 128 + self._say_stopping(e)
        finally:
            self.stop()
            for signum_, old in handlers.items():
                signal.signal(signum_, old)

    def _report(self, wf: dict[str, Any]) -> None:
        """Every placement of ``wf``: node, reasons, predicted vs observed figures."""
        say = self.console.print
        say(f"\n[bold]{wf['name']}[/bold] ({wf['id']}): ", render.state(wf["state"]),
            f" {wf.get('reason') or ''}")
        for r in wf["runs"]:
            p = r.get("placement") or {}
            pred, obs = p.get("predicted", {}), r.get("observed", {})
            sim = " [dim]\\[simulated][/dim]" if r.get("simulated") else ""
            say(f"  [bold]{r['task']}[/bold] → {r.get('node')} ({p.get('tier', '?')}){sim}  ",
                render.state(r["state"]), f"  run {r['id']}")
            say(f"      why:     {'; '.join(p.get('reasons', [])) or '-'}", highlight=False)
            if r["state"] != "Succeeded" and r.get("reason"):
                say(f"      failed:  {r['reason']} (exit code {r.get('exitCode')}); "
                    "the task was retried", highlight=False)
            say(f"      runtime: predicted {_dur(pred.get('runtimeS'))}, observed "
                f"{_dur(obs.get('runtimeS'))}   completion predicted "
                f"{_dur(pred.get('completionS'))}", highlight=False)
            observed_j = obs.get("energyJ")
            say(f"      energy:  predicted {pred.get('energyJ', 0):.3g} J, observed "
                + (f"{observed_j:.3g} J" if observed_j is not None else "not measured here"),
                highlight=False)
            say(f"      data:    predicted {format_bytes(pred.get('bytesMoved', 0))}B in, observed "
                f"{format_bytes(obs.get('bytesIn', 0))}B in / {format_bytes(obs.get('bytesOut', 0))}B out"
                + (f"   RTT to SLO target {pred['latencyMs']:.3g} ms" if pred.get("latencyMs")
                   is not None else ""), highlight=False)


def with_site_credentials(fed: FederationDocument, site: str, username: str,
                          password: str, **config: Any) -> FederationDocument:
    """``fed`` with ``username`` and ``password`` (and any other ``config`` keys) in the
    config of its site ``site`` (the devices site's broker credentials, as an operator
    would write them); ``fed`` itself is left as it is."""
    sites = [s.model_copy(update={"config": {**s.config, "username": username,
                                              "password": password, **config}})
             if s.name == site else s
             for s in fed.spec.sites]
    return fed.model_copy(update={"spec": fed.spec.model_copy(update={"sites": sites})})


def _dur(x: float | None) -> str:
    return "-" if x is None else format_duration(x)
