"""The persistent outbox and run table (stdlib sqlite3 in the agent's state dir).

Nothing a run reports may be lost across broker or network outages, or an agent restart:

* every message to publish (RunUpdates, and the empty payloads that clear a forgotten
  run's retained message) is first written to ``outbox``; it is deleted only when the
  broker acknowledged it (paho's ``on_publish`` with the message id, i.e. the PUBACK);
  on every (re)connect the agent re-publishes what is pending, in order;
* ``runs`` holds every run the agent knows — its spec and latest update — until the
  control plane sends a ForgetCommand, so a duplicate RunCommand is answered with the
  latest state instead of a second process, and the latest state of every held run can
  be re-published after a reconnect (a restarted control plane re-adopts runs that way).

Thread-safe: one connection guarded by a lock (runs report from their own threads).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edge_agent.protocol import RunSpec, RunUpdate, encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    run_id TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    latest TEXT,
    seq INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    pid_started REAL,
    created REAL NOT NULL DEFAULT (julianday('now'))
);
"""

TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})


@dataclass(frozen=True)
class Pending:
    """One message not yet acknowledged by the broker."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    run_id: str | None


@dataclass(frozen=True)
class RunRecord:
    """A run the agent holds: its spec and its latest update (``None`` before the first)."""

    run_id: str
    spec: RunSpec
    latest: RunUpdate | None

    @property
    def terminal(self) -> bool:
        return self.latest is not None and self.latest.state in TERMINAL_PHASES


class Outbox:
    """sqlite3-backed outbox + run table at ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ outbox

    def enqueue(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = True,
                run_id: str | None = None) -> int:
        """Store a message to publish; returns its outbox id (publish order)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, run_id) VALUES (?, ?, ?, ?, ?)",
                (topic, payload, qos, int(retain), run_id),
            )
            return int(cur.lastrowid or 0)

    def ack(self, outbox_id: int) -> None:
        """The broker acknowledged the message: forget it."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))

    def pending(self) -> list[Pending]:
        """Every unacknowledged message, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, run_id FROM outbox ORDER BY id"
            ).fetchall()
        return [Pending(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def has_pending(self, outbox_id: int) -> bool:
        with self._lock:
            return self._db.execute(
                "SELECT 1 FROM outbox WHERE id = ?", (outbox_id,)).fetchone() is not None

    # ------------------------------------------------------------ runs

    def add_run(self, spec: RunSpec) -> bool:
        """Record a new run; False when ``spec.run_id`` is already held (duplicate submit)."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO runs (run_id, spec) VALUES (?, ?)",
                                 (spec.run_id, encode(spec).decode()))
            except sqlite3.IntegrityError:
                return False
            return True

    def record_update(self, update: RunUpdate, topic: str, payload: bytes) -> int:
        """Store ``update`` as the run's latest state and queue it, atomically.

        Returns the outbox id of the queued message.
        """
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "UPDATE runs SET latest = ?, seq = ?, state = ? WHERE run_id = ?",
                    (encode(update).decode(), update.seq, update.state, update.run_id),
                )
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, run_id) "
                    "VALUES (?, ?, 1, 1, ?)", (topic, payload, update.run_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return int(cur.lastrowid or 0)

    def set_process(self, run_id: str, pid: int, started: float) -> None:
        """Remember the run's process (group leader pid and its start time, s since epoch)."""
        with self._lock:
            self._db.execute("UPDATE runs SET pid = ?, pid_started = ? WHERE run_id = ?",
                             (pid, started, run_id))

    def process_of(self, run_id: str) -> tuple[int, float] | None:
        """The ``(pid, start time)`` recorded for the run, if any."""
        with self._lock:
            row = self._db.execute("SELECT pid, pid_started FROM runs WHERE run_id = ?",
                                   (run_id,)).fetchone()
        return (int(row[0]), float(row[1])) if row and row[0] is not None else None

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT run_id, spec, latest FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _record(row) if row else None

    def runs(self) -> list[RunRecord]:
        """Every held run, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, spec, latest FROM runs ORDER BY created, rowid").fetchall()
        return [_record(r) for r in rows]

    def forget_run(self, run_id: str) -> bool:
        """Drop the run's record and its pending updates; False if it was not held."""
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            self._db.execute("DELETE FROM outbox WHERE run_id = ? AND length(payload) > 0",
                             (run_id,))
            self._db.execute("COMMIT")
            return cur.rowcount > 0


def _record(row: tuple[str, str, str | None]) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        spec=msgspec.json.decode(row[1], type=RunSpec),
        latest=msgspec.json.decode(row[2], type=RunUpdate) if row[2] else None,
    )
