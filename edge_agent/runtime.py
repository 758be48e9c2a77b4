"""The task runtime: runs one :class:`RunSpec` as a local process tree.

For each run: a working directory ``{state_dir}/runs/{run_id}/work``; inputs fetched by
HTTP GET and verified against their sha256 (through a content-addressed cache in
``{state_dir}/cache`` so bytes this device already fetched or produced are not
downloaded again); the process started in its own session (``start_new_session``) with a
minimal environment; a timeout or a cancel kills the whole process tree (SIGTERM, then
SIGKILL after a grace period); after exit 0 each output is uploaded by HTTP PUT, retried
with backoff until a deadline. Every state change is handed to a ``report`` callback.

Who runs it and within what: the process runs as the run user (:meth:`Runtime.run_user`:
``continuum-run`` when the agent is root, unless ``run_as`` says otherwise; the agent's
own user when it is not root) with no supplementary groups, in its working directory
owned by that user (mode 0700), ``HOME`` pointing there, under the resource ceilings of
:class:`Limits` (``setrlimit`` in the child before ``exec``). The program executed is the
one :meth:`Runtime.program` resolved (``shutil.which`` on the run's PATH, every symlink
followed) and checked against ``allow_command``: what is checked is what runs.

Why one module of this size: everything a run does on the device, in order (inputs, the
checked program, the unprivileged process tree with its limits, outputs), shares the run's
working directory and cancel event; splitting it would scatter one security-relevant path
over several files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import random
import re
import resource
import shlex
import shutil
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from edge_agent.protocol import ArtifactGet, OutputDigest, RunSpec
from edge_agent.protocol.v1 import OUTPUT_TAIL_BYTES

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
INHERITED_ENV = ("PATH", "HOME", "LANG")
"""The only variables a run inherits from the agent's environment."""

_LIST_MODULES = (
    "import json, pkgutil, sys\n"
    "sys.path = [p for p in sys.path if p]\n"  # not the current directory
    "names = {m.name for m in pkgutil.iter_modules()} | set(sys.builtin_module_names)\n"
    "print(json.dumps(sorted(n for n in names if not n.startswith('_'))))\n"
)
PROBE_TIMEOUT_S = 30.0
"""Longest wait (s) for the interpreter to list its modules."""

Report = Callable[..., object]
"""``report(state, **fields)``: fields are RunUpdate fields (exit_code, reason, ...)."""


DEFAULT_RUN_USER = "continuum-run"
"""The unprivileged user a root agent runs tasks as (the installer creates it)."""
CREATE_RUN_USER = (f"useradd --system --no-create-home --home-dir /nonexistent "
                   f"--shell /usr/sbin/nologin {DEFAULT_RUN_USER}")


class RunFailure(Exception):
    """A run cannot go on; the message is the reason reported in the Failed update."""


@dataclass(frozen=True)
class RunUser:
    """The user a task process is switched to (only when it differs from the agent's)."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Limits:
    """Resource ceilings of each task process (``None`` = unlimited).

    ``cpu_seconds`` (RLIMIT_CPU, s of CPU time), ``address_space`` (RLIMIT_AS, bytes),
    ``open_files`` (RLIMIT_NOFILE), ``processes`` (RLIMIT_NPROC: every process of the run
    user counts; the kernel does not enforce it for root). Defaults: see
    :class:`edge_agent.config.AgentConfig`.
    """

    cpu_seconds: int | None = None
    address_space: int | None = None
    open_files: int | None = 1024
    processes: int | None = 512

    def pairs(self) -> list[tuple[int, int]]:
        """``(RLIMIT_*, value)`` for every ceiling that is set."""
        return [(res, v) for res, v in ((resource.RLIMIT_CPU, self.cpu_seconds),
                                        (resource.RLIMIT_AS, self.address_space),
                                        (resource.RLIMIT_NOFILE, self.open_files),
                                        (resource.RLIMIT_NPROC, self.processes))
                if v is not None]

    def preexec(self) -> Callable[[], None]:
        """A function for ``Popen(preexec_fn=...)``: sets soft and hard limits in the child
        (after the user switch, before ``exec``). It only calls ``setrlimit``, so it is
        safe in the child of a threaded process."""
        pairs = self.pairs()
        setrlimit = resource.setrlimit

        def apply() -> None:
            for res, value in pairs:
                setrlimit(res, (value, value))

        return apply


@dataclass
class RunOutcome:
    """What a finished run reports. ``state`` is Succeeded, Failed or Cancelled."""

    state: str
    exit_code: int | None = None
    reason: str = ""
    output_tail: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    outputs: list[OutputDigest] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "reason": self.reason,
                "output_tail": self.output_tail, "started_at": self.started_at,
                "finished_at": self.finished_at, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "outputs": self.outputs}


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing absolute paths and ``..`` that would leave ``root``.

    Raises:
        RunFailure: the path escapes the working directory.
    """
    p = (root / rel).resolve()
    if os.path.isabs(rel) or not p.is_relative_to(root.resolve()):
        raise RunFailure(f"path {rel!r} is outside the run's working directory")
    return p


def kill_tree(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Kill ``proc`` and every descendant: SIGTERM, then SIGKILL after ``grace`` s.

    ``proc`` must have been started with ``start_new_session=True`` (its pid is its
    process group id). Descendants are found with psutil (recursively) before signalling,
    so children that left the group are killed too; the whole group is then ``killpg``-ed.
    """
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []

    def signal_all(sig: signal.Signals) -> None:
        for p in descendants:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _alive(descendants):
            break
        time.sleep(0.02)
    signal_all(signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
        log.error("process %d did not die after SIGKILL", proc.pid)
    psutil.wait_procs([p for p in descendants if _alive([p])], timeout=2)


def kill_orphan_group(pid: int, started: float) -> bool:
    """Kill the process group ``pid`` if its leader is the process that started at ``started``.

    Used after an agent restart for runs whose process outlived the agent (they run in
    their own session). The start time (s since the epoch, psutil's ``create_time``)
    guards against a recycled pid. Returns True when something was killed.
    """
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - started) > 1.0:
            return False
        victims = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for v in victims:
        try:
            v.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True


def _alive(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def _tail(path: Path, limit: int = OUTPUT_TAIL_BYTES) -> str:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return text[-limit:]


class Runtime:
    """Runs RunSpecs under ``state_dir``; one call of :meth:`execute` per run (own thread).

    Args:
        state_dir: the agent's state directory.
        run_as: user tasks run as (see :meth:`run_user`); ``None`` = the default.
        limits: the rlimits of task processes.
        allow_command: allowed command prefixes (see :meth:`program`); empty = any.
        default_user: the run user of a root agent when ``run_as`` is ``None``.
        kill_grace: seconds between SIGTERM and SIGKILL.
        upload_deadline: seconds an output upload keeps retrying.
        http_timeout: seconds per HTTP request.
        server_ca: CA bundle that verifies the control plane's ``https`` API (artifact
            transfers); ``None`` = the system's CAs.
    """

    def __init__(self, state_dir: Path, *, kill_grace: float = 5.0,
                 upload_deadline: float = 300.0, http_timeout: float = 30.0,
                 run_as: str | None = None, limits: Limits | None = None,
                 allow_command: Sequence[str] = (),
                 default_user: str = DEFAULT_RUN_USER, server_ca: Path | None = None) -> None:
        self.state_dir = state_dir
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(server_ca)) if server_ca is not None else True)
        self.cache_dir = state_dir / "cache"
        self.runs_dir = state_dir / "runs"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.chmod(0o700)  # other runs' data: the agent copies what a run needs
        self.kill_grace = kill_grace
        self.upload_deadline = upload_deadline
        self.http_timeout = http_timeout
        self.run_as = run_as
        self.default_user = default_user
        self.limits = limits or Limits()
        self.allow_command = [shlex.split(p) for p in allow_command]

    # ------------------------------------------------------------ who and what runs

    def run_user(self) -> RunUser | None:
        """The user to switch task processes to; ``None`` = the agent's own user.

        Raises:
            RunFailure: the agent is root and ``continuum-run`` does not exist (the message
                says how to create it), ``run_as`` names no user, or the agent is not root
                and ``run_as`` names another user.
        """
        euid = os.geteuid()
        name = self.run_as
        if name is None:
            if euid != 0:
                return None
            name = self.default_user
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            if self.run_as is None:
                raise RunFailure(
                    f"refused by local policy run-as: the agent runs as root and runs tasks "
                    f"as the unprivileged user {name!r}, which does not exist; create it "
                    f"({CREATE_RUN_USER.replace(DEFAULT_RUN_USER, name)}) or start the agent "
                    f"with --run-as root") from None
            raise RunFailure(f"refused by local policy run-as: no user {name!r}") from None
        if pw.pw_uid == euid:
            return None
        if euid != 0:
            raise RunFailure(f"refused by local policy run-as: the agent runs as uid {euid} "
                             f"and cannot run tasks as {name!r} (only root switches users)")
        return RunUser(name, pw.pw_uid, pw.pw_gid)

    def program(self, argv: Sequence[str], env: dict[str, str], cwd: Path) -> str:
        """The program ``argv`` runs: ``argv[0]`` looked up on ``env['PATH']`` (relative
        to ``cwd`` when it contains a ``/``), every symlink followed; then checked against
        ``allow_command``: the first token of a prefix must resolve (on the agent's PATH)
        to the same file, the remaining tokens must equal ``argv``'s.

        Raises:
            RunFailure: no such program, or the local policy refuses it.
        """
        first = argv[0]
        if "/" in first and not os.path.isabs(first):
            first = str(cwd / first)
        found = shutil.which(first, path=env.get("PATH"))
        if found is None:
            if self.allow_command:
                raise RunFailure(f"refused by local policy allow-command: {argv[0]!r} is "
                                 f"no program on the run's PATH ({env.get('PATH')})")
            raise RunFailure(f"cannot start {argv[0]!r}: no such program on the run's PATH "
                             f"({env.get('PATH')})")
        real = os.path.realpath(found)
        if not self.allow_command:
            return real
        agent_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        for prefix in self.allow_command:
            allowed = shutil.which(prefix[0], path=agent_path)
            if (allowed is not None and os.path.realpath(allowed) == real
                    and list(argv[1:len(prefix)]) == prefix[1:]):
                return real
        return_prefixes = ", ".join(shlex.join(p) for p in self.allow_command)
        raise RunFailure(f"refused by local policy allow-command: {shlex.join(argv)!r} runs "
                         f"{real}, which is not an allowed program with an allowed prefix "
                         f"({return_prefixes})")

    def python_modules(self, interpreter: str = "python3") -> list[str] | None:
        """The top-level modules ``interpreter`` (found on the PATH runs get) can import,
        as a run would see them (the runs' environment, no current directory): every
        installed package and the standard library, names starting with ``_`` left out.
        Listing is a directory walk (``pkgutil.iter_modules``), nothing is imported.

        Returns ``[]`` when there is no such interpreter (runs cannot import anything),
        ``None`` when it could not be asked (it failed or timed out; logged): then the
        device declares nothing and placement assumes it provides any module.
        """
        env = self.environment(RunSpec(run_id="probe", workflow_id="probe", task="probe"))
        exe = shutil.which(interpreter, path=env.get("PATH"))
        if exe is None:
            log.warning("no %s on the runs' PATH (%s): tasks that need Python modules will "
                        "not be placed here", interpreter, env.get("PATH"))
            return []
        try:
            out = subprocess.run([exe, "-E", "-c", _LIST_MODULES], env=env, cwd=self.state_dir,
                                 capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                                 check=True)
            names = json.loads(out.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            log.warning("cannot list the modules of %s (%s); this device declares none", exe, e)
            return None
        return [str(n) for n in names]

    # ------------------------------------------------------------ cache

    def cached(self, sha256: str) -> Path | None:
        """The cached file with this digest, if this device holds it."""
        p = self.cache_dir / sha256
        return p if _SHA256.match(sha256) and p.is_file() else None

    def _cache_put(self, src: Path, sha256: str) -> None:
        dst = self.cache_dir / sha256
        if dst.exists():
            return
        tmp = self.cache_dir / f".{sha256}.{threading.get_ident()}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)

    # ------------------------------------------------------------ inputs

    def fetch_input(self, get: ArtifactGet, workdir: Path) -> int:
        """Place input ``get`` in ``workdir``; returns bytes downloaded (0 on a cache hit).

        Raises:
            RunFailure: download failed, or the content's sha256 differs.
        """
        dest = safe_join(workdir, get.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = get.sha256.lower()
        hit = self.cached(digest)
        if hit is not None:
            shutil.copyfile(hit, dest)
            log.info("input %s: cache hit (%s)", get.name, digest[:12])
            return 0
        import httpx  # lazy: an idle agent never loads it (issue 16, lean agent)

        tmp = dest.with_name(dest.name + ".part")
        h = hashlib.sha256()
        n = 0
        try:
            with httpx.stream("GET", get.url, timeout=self.http_timeout, verify=self.verify,
                              follow_redirects=True) as r:
                if r.status_code != 200:
                    raise RunFailure(f"input {get.name!r}: GET {get.url} returned HTTP "
                                     f"{r.status_code}")
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes(_CHUNK):
                        h.update(chunk)
                        n += len(chunk)
                        f.write(chunk)
        except httpx.HTTPError as e:
            tmp.unlink(missing_ok=True)
            raise RunFailure(f"input {get.name!r}: GET {get.url} failed: {e}") from e
        got = h.hexdigest()
        if got != digest:
            tmp.unlink(missing_ok=True)
            raise RunFailure(f"input {get.name!r}: sha256 mismatch (expected {digest}, "
                             f"got {got}, {n} bytes from {get.url})")
        os.replace(tmp, dest)
        self._cache_put(dest, digest)
        return n

    # ------------------------------------------------------------ outputs

    def upload(self, url: str, path: Path, name: str,
               cancel: threading.Event | None = None) -> int:
        """PUT the file's bytes to ``url``, retrying 5xx/network errors until the deadline
        or until ``cancel`` is set (an agent stopping does not wait out the deadline).

        Returns bytes uploaded. Raises:
            RunFailure: a 4xx answer, still failing at the deadline, or cancelled.
        """
        import httpx  # lazy: an idle agent never loads it (issue 16, lean agent)

        cancel = cancel or threading.Event()
        data = path.read_bytes()
        deadline = time.monotonic() + self.upload_deadline
        delay = 0.2
        last = ""
        while True:
            try:
                r = httpx.put(url, content=data, timeout=self.http_timeout, verify=self.verify,
                              headers={"Content-Type": "application/octet-stream"})
                if r.status_code < 300:
                    return len(data)
                last = f"HTTP {r.status_code}"
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    raise RunFailure(f"output {name!r}: PUT {url} was refused: {last}")
            except httpx.HTTPError as e:
                last = str(e) or type(e).__name__
            if time.monotonic() + delay > deadline:
                raise RunFailure(f"output {name!r}: PUT {url} still failing after "
                                 f"{self.upload_deadline:g} s: {last}")
            log.warning("output %s: PUT %s failed (%s); retrying in %.1f s", name, url, last,
                        delay)
            if cancel.wait(delay * random.uniform(0.5, 1.0)):
                raise RunFailure(f"output {name!r}: upload cancelled (last attempt: {last})")
            delay = min(delay * 2, 10.0)

    # ------------------------------------------------------------ execute

    def command(self, spec: RunSpec, workdir: Path) -> list[str]:
        """The argv to run: ``spec.argv``, or ``interpreter + [script file]``."""
        if spec.argv:
            return list(spec.argv)
        if spec.script is not None:
            script = workdir / ".continuum-script"
            script.write_text(spec.script)
            return [*(spec.interpreter or ["python3"]), str(script)]
        raise RunFailure("the run has neither argv nor script")

    def environment(self, spec: RunSpec) -> dict[str, str]:
        """PATH/HOME/LANG from the agent, then ``spec.env``, then the CONTINUUM_* ids."""
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(spec.env)
        env["CONTINUUM_RUN_ID"] = spec.run_id
        env["CONTINUUM_WORKFLOW_ID"] = spec.workflow_id
        return env

    def execute(self, spec: RunSpec, report: Report, cancel: threading.Event,
                on_start: Callable[[int], None] | None = None) -> RunOutcome:
        """Run ``spec`` to the end; ``report("Running", ...)`` when the process starts.

        ``on_start(pid)`` is called with the process (group leader) id once it runs.

        The final state is returned (the caller reports it). ``cancel`` set at any time
        kills the process tree and ends the run as Cancelled.
        """
        rundir = self.runs_dir / spec.run_id
        workdir = rundir / "work"
        logfile = rundir / "output.log"
        out = RunOutcome(state="Failed")
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            for get in spec.inputs:
                if cancel.is_set():
                    return self._finish(out, "Cancelled", "cancelled before start", logfile)
                out.bytes_in += self.fetch_input(get, workdir)
            argv = self.command(spec, workdir)
            env = self.environment(spec)
            exe = self.program(argv, env, workdir)
            user = self.run_user()
            switch: dict[str, Any] = {}
            if user is not None:
                for p in [workdir, *workdir.rglob("*")]:
                    os.lchown(p, user.uid, user.gid)
                env["HOME"] = str(workdir)
                switch = {"user": user.uid, "group": user.gid, "extra_groups": []}
            workdir.chmod(0o700)
            if cancel.is_set():
                return self._finish(out, "Cancelled", "cancelled before start", logfile)
            with logfile.open("wb") as lf:
                try:
                    proc = subprocess.Popen(
                        argv, executable=exe, cwd=workdir, env=env, stdout=lf,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=True, preexec_fn=self.limits.preexec(), **switch,
                    )
                except OSError as e:
                    raise RunFailure(f"cannot start {argv[0]!r}: {e}") from e
            out.started_at = datetime.now(UTC)
            if on_start is not None:
                on_start(proc.pid)
            log.info("run %s: started pid %d as %s: %s (%s)", spec.run_id, proc.pid,
                     user.name if user else "the agent's user", argv, exe)
            report("Running", started_at=out.started_at, bytes_in=out.bytes_in)
            deadline = (time.monotonic() + spec.timeout_s) if spec.timeout_s else None
            why = ""
            while True:
                try:
                    proc.wait(timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if cancel.is_set():
                    why = "cancel"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    why = "timeout"
                    break
            if why:
                kill_tree(proc, self.kill_grace)
            else:
                # The leader exited; do not leave orphans of the run behind.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            out.exit_code = proc.returncode
            out.finished_at = datetime.now(UTC)
            if why == "cancel":
                return self._finish(out, "Cancelled", "cancelled on request; process tree "
                                    "killed", logfile)
            if why == "timeout":
                return self._finish(out, "Failed", f"timed out after {spec.timeout_s:g} s; "
                                    "process tree killed", logfile)
            if proc.returncode != 0:
                return self._finish(out, "Failed", f"exited with code {proc.returncode}",
                                    logfile)
            for put in spec.outputs:
                path = safe_join(workdir, put.path)
                if not path.is_file():
                    raise RunFailure(f"output {put.name!r}: file {put.path!r} was not "
                                     "written by the task")
                digest = sha256_file(path)
                out.bytes_out += self.upload(put.url, path, put.name, cancel)
                self._cache_put(path, digest)
                out.outputs.append(OutputDigest(name=put.name, sha256=digest,
                                                size=path.stat().st_size))
            return self._finish(out, "Succeeded", "", logfile)
        except RunFailure as e:
            log.warning("run %s failed: %s", spec.run_id, e)
            return self._finish(out, "Failed", str(e), logfile)
        except Exception as e:  # a bug or an OS error must still end the run
            log.exception("run %s: unexpected error", spec.run_id)
            return self._finish(out, "Failed", f"agent error: {type(e).__name__}: {e}",
                                logfile)

    def _finish(self, out: RunOutcome, state: str, reason: str, logfile: Path) -> RunOutcome:
        out.state = state
        out.reason = reason
        out.finished_at = out.finished_at or datetime.now(UTC)
        out.output_tail = _tail(logfile)
        return out
