"""Durable state: workflows, tasks, runs, events, sites, artifacts, enrolled devices, API
tokens, the audit trail and the replicas' device-message relay (SQLAlchemy 2).

SQLite (a file under the state directory) by default, in WAL mode with
``synchronous=FULL``: a row the API committed survives the process being killed.
Only portable column types are used (``String``, ``Integer``, ``Float``, ``JSON``,
timezone-aware ``DateTime``), so the same schema runs on PostgreSQL.

Times are stored as UTC. States are enums (:class:`~continuum.model.RunState`,
``TaskState``, ``WorkflowState``) stored as their values. The schema is made and changed
by the Alembic migrations in ``control_plane/migrations`` (:class:`Store` upgrades the
database to the newest revision when it opens it; ``continuum db upgrade`` does it
alone); a model change here needs a new migration there. A state directory of a release
from before migrations is adopted in place; one from before ``replaces_run_id`` cannot
be and must be started afresh (:class:`Store` says so with :class:`SchemaMismatch`).
"""

from __future__ import annotations

import copy
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from continuum.model import RunState, Task, TaskState, WorkflowDocument, WorkflowState
from control_plane.migrations import SchemaMismatch, upgrade

__all__ = ["GroupCommit", "SchemaMismatch", "Store"]  # SchemaMismatch: re-exported


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A short random id, e.g. ``wf-3f9a1c2b7d4e`` (48 random bits)."""
    return f"{prefix}-{secrets.token_hex(6)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _state(enum: type[StrEnum]) -> Enum:
    """A state column: the enum's values as VARCHAR(16) (no native enum type, so the same
    schema runs on SQLite and PostgreSQL); rows read back as enum members, so code
    compares with ``RunState.Running``, never a literal string."""
    return Enum(enum, native_enum=False, length=16, validate_strings=True,
                values_callable=lambda e: [m.value for m in e])


NULLABLE_JSON = JSON(none_as_null=True)
"""A JSON column whose ``None`` is SQL NULL however it is written (the ORM and the Core
statements of :meth:`Store.write_rows` alike; plain ``JSON`` stores the text ``null`` for a
``None`` written through Core)."""


class Base(DeclarativeBase):
    pass


class WorkflowRow(Base):
    __tablename__ = "workflows"
    __table_args__ = (Index("ix_workflows_state_created_at", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    state: Mapped[WorkflowState] = mapped_column(_state(WorkflowState), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    tenant: Mapped[str] = mapped_column(String(63), default="default", index=True)
    """The tenant (project) the workflow, its runs, events and artifacts belong to."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True,
                                                         index=True)


class TaskRow(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    state: Mapped[TaskState] = mapped_column(_state(TaskState), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    depends_on: Mapped[list[str]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    task_name: Mapped[str] = mapped_column(String(63))
    attempt: Mapped[int] = mapped_column(Integer)
    state: Mapped[RunState] = mapped_column(_state(RunState), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    site: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    handle: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON, nullable=True)
    placement: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    placed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tail: Mapped[str] = mapped_column(Text, default="")
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    runtime_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    cpu_time_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    accounting: Mapped[dict[str, Any] | None] = mapped_column(NULLABLE_JSON, nullable=True)
    """The backend's accounting record of the finished run (RunStatus.accounting)."""
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    released: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    replaces_run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    """Set on the new run of a make-before-break move: the run it replaces. The move is
    in progress while both are active (the old one serves until the new one runs)."""


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class SiteRow(Base):
    __tablename__ = "sites"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ArtifactRow(Base):
    __tablename__ = "artifacts"

    workflow_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    """Bytes (BIGINT: an artifact may be up to ``artifact_max_bytes``, 16 GiB by default)."""
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EnrollmentTokenRow(Base):
    """A one-time device enrolment token: only its SHA-256 is kept."""

    __tablename__ = "enrollment_tokens"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(63))
    tenant: Mapped[str] = mapped_column(String(63))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(63), nullable=True)


class DeviceCredentialRow(Base):
    """An enrolled device: its one site and tenant and its broker password's
    Mosquitto ``$7$`` hash (never the password itself)."""

    __tablename__ = "device_credentials"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    site: Mapped[str] = mapped_column(String(63), index=True)
    tenant: Mapped[str] = mapped_column(String(63))
    password_hash: Mapped[str] = mapped_column(String(255))
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TokenRow(Base):
    """An API token the control plane issued (control_plane/auth.py): its claims, never
    the token itself. A token whose row is missing or revoked is refused."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The token's ``jti``."""
    subject: Mapped[str] = mapped_column(String(128), index=True)
    roles: Mapped[list[str]] = mapped_column(JSON)
    tenants: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditRow(Base):
    """One mutating API call (control_plane/audit.py): who, in which tenant, what, when,
    and how it ended."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    subject: Mapped[str] = mapped_column(String(128), index=True)
    """The caller's token subject; ``-`` for a call without a valid token."""
    token_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tenant: Mapped[str] = mapped_column(String(63), default="")
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(8), index=True)
    """``ok`` (2xx/3xx), ``denied`` (401/403) or ``failed`` (any other 4xx/5xx)."""


class LeaseRow(Base):
    """A leadership lease (control_plane/leader.py): who holds ``name`` (e.g.
    ``reconciler``), under which fencing ``epoch``, until when. One row per lease name;
    the epoch only grows (+1 at every change of holder)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    """The holding replica's identity, ``<hostname>-<pid>-<random>``."""
    epoch: Mapped[int] = mapped_column(BigInteger)
    """The fencing token: every write of the leader checks it is still this."""
    api_url: Mapped[str] = mapped_column(Text, default="")
    """The holder's advertised API URL (followers redirect leader-only requests there)."""
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeviceMessageRow(Base):
    """The latest message per (site, topic) that one replica consumed from an MQTT 5
    shared subscription (a device's telemetry, a run's update), for the other replicas
    (control_plane/relay.py). Upserted, never one row per message."""

    __tablename__ = "device_messages"

    site: Mapped[str] = mapped_column(String(63), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    """The raw MQTT payload; empty: the run's message was cleared (a tombstone)."""
    rank: Mapped[float] = mapped_column(Float)
    """Order within the topic: a row is replaced only by a message of higher or equal rank."""
    received_at: Mapped[float] = mapped_column(Float)
    """When the consuming replica received it (s since the epoch)."""
    origin: Mapped[str] = mapped_column(String(64))
    """The consuming adapter instance (its messages are not fed back to it)."""
    written_at: Mapped[float] = mapped_column(Float, index=True)
    """When the row was last written (s since the epoch, the writer's clock)."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """The engine of a SQLAlchemy ``url`` as the store uses it (SQLite: WAL,
    ``synchronous=FULL``, foreign keys on, 30 s busy timeout; a server database: each
    pooled connection is checked before use, so one a database restart cut is replaced);
    nothing is migrated."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


FenceCheck = Callable[[Session], None]
"""Checks, inside a write transaction, that its writer may still write (raises if not,
e.g. :class:`control_plane.leader.Fenced`); see :meth:`Store.fenced`."""


class Store:
    """Engine and session factory; ``session()`` is a unit of work that commits on exit.

    Opening it upgrades the database to the newest migration
    (:func:`control_plane.migrations.upgrade`, under a lock on PostgreSQL).

    Raises:
        SchemaMismatch: the database cannot be brought to this release's schema (made
            by a release from before ``replaces_run_id``, or migrated by a newer one).
    """

    _fence: FenceCheck | None = None

    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = make_engine(url)
        try:
            upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on error.

        On a :meth:`fenced` view, the fence is checked in the same transaction just before
        its first write is flushed (a read-only session does not check); an error it
        raises rolls the whole transaction back."""
        with self._sessions() as s, s.begin():
            if self._fence is not None:
                _install_fence(s, self._fence)
            yield s
            if inserts := s.info.pop(_INSERTS, None):  # see insert_later
                s.flush()
                self.fence_in(s)
                conn = s.connection()
                for table, rows in inserts.items():
                    conn.execute(insert(table), rows)

    def fenced(self, check: FenceCheck) -> Store:
        """A view of this store (same engine) whose write transactions first run
        ``check`` (see :meth:`session`); the leader-only components write through one."""
        view = copy.copy(self)
        view._fence = check
        return view

    def check_fence(self) -> None:
        """Run the fence now, in a transaction of its own (before a side effect outside
        the database, e.g. a backend submit). Nothing on an unfenced store.

        Raises:
            whatever the fence raises (:class:`control_plane.leader.Fenced`).
        """
        if self._fence is not None:
            with self._sessions() as s, s.begin():
                self._fence(s)

    def fence_in(self, s: Session) -> None:
        """Run the fence in ``s``'s transaction, before a bulk statement (``delete``,
        ``update``): those do not flush, so they do not trigger the automatic check of
        :meth:`session`. Nothing on an unfenced store.

        Raises:
            whatever the fence raises (:class:`control_plane.leader.Fenced`); the
            transaction is then rolled back.
        """
        if self._fence is not None and not s.info.get(_FENCE_CHECKED):
            self._fence(s)
            s.info[_FENCE_CHECKED] = True  # only once it passed

    def write_rows(self, s: Session, model: type[Base], rows: Iterable[ColumnRow]) -> int:
        """Write back the changed columns of ``rows`` (read by :func:`read_rows` from
        ``model``'s table) in ``s``'s transaction: one executemany ``UPDATE … WHERE id = ?``
        per set of changed columns, fenced (:meth:`fence_in`) when there is any. The rows
        then count as unchanged. Returns how many rows were written.

        Raises:
            whatever the fence raises (:class:`control_plane.leader.Fenced`).
        """
        groups: dict[frozenset[str], list[dict[str, Any]]] = {}
        written = [row for row in rows if row.changed()]
        for row in written:
            values, changed = row.values(), row.changed()
            groups.setdefault(frozenset(changed), []).append(
                {"b_id": values["id"], **{f"b_{c}": values[c] for c in changed}})
        if not groups:
            return 0
        self.fence_in(s)
        table = table_of(model)
        conn = s.connection()
        for cols, params in groups.items():
            conn.execute(update(table).where(table.c.id == bindparam("b_id"))
                         .values({c: bindparam(f"b_{c}") for c in sorted(cols)}), params)
        for row in written:
            row.changed().clear()
        return len(written)

    def vacuum(self, *tables: str) -> None:
        """Rewrite storage so rows just changed leave no old bytes behind (e.g. a secret
        just sealed): SQLite rewrites the whole file (``VACUUM``) and empties the
        write-ahead log (whose frames would keep them); PostgreSQL each of
        ``tables`` (``VACUUM FULL``, which locks the table while it runs: name small
        ones). Runs outside a transaction."""
        if self.url.startswith("sqlite"):
            statements = ["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"]
        elif self.engine.dialect.name == "postgresql":
            prep = self.engine.dialect.identifier_preparer
            statements = [f"VACUUM FULL {prep.quote(t)}" for t in tables]
        else:
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            for sql in statements:
                c.exec_driver_sql(sql)

    def ping(self) -> None:
        """Raises if the database cannot be reached."""
        with self._sessions() as s:
            s.execute(select(1))

    def close(self) -> None:
        self.engine.dispose()


class _Write:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[Session], Any]) -> None:
        self.fn = fn
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Writes from many threads committed together: :meth:`write` returns once its write
    is committed (durable, as with :meth:`Store.session`), but writes that arrive while
    another group is committing share the next commit, so N concurrent writers pay for
    about one fsync instead of N. No thread of its own: the first waiting caller commits
    the group (at most ``max_group`` writes) for the others.

    A group whose transaction fails is retried one write per transaction, so only the
    write that fails gets its error.
    """

    def __init__(self, store: Store, max_group: int = 256) -> None:
        self.store = store
        self.max_group = max_group
        self._cond = threading.Condition()
        self._pending: list[_Write] = []
        self._writing = False

    def write(self, fn: Callable[[Session], Any]) -> Any:
        """Run ``fn(session)`` in a transaction shared with other writers' and commit it;
        returns what ``fn`` returned. ``fn`` may run twice (a failed group is retried
        one write at a time), so it must build the rows it adds itself.

        Raises:
            whatever ``fn`` or the commit raised (its transaction was rolled back).
        """
        item = _Write(fn)
        with self._cond:
            self._pending.append(item)
        while True:
            with self._cond:
                while not item.done and self._writing:
                    self._cond.wait()
                if item.done:
                    break
                self._writing = True  # this caller commits the next group
                group = self._pending[:self.max_group]
                del self._pending[:self.max_group]
            try:
                self._commit(group)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error
        return item.result

    def _commit(self, group: list[_Write]) -> None:
        try:
            with self.store.session() as s:
                results = [w.fn(s) for w in group]
            for w, r in zip(group, results, strict=True):
                w.result = r
        except Exception as e:
            if len(group) == 1:
                group[0].error = e
            else:
                for w in group:  # each alone: only the one that fails gets its error
                    try:
                        with self.store.session() as s:
                            w.result = w.fn(s)
                    except Exception as e1:
                        w.error = e1
        except BaseException as e:
            for w in group:
                w.error = e
            raise
        finally:
            for w in group:
                w.done = True


def _install_fence(s: Session, check: FenceCheck) -> None:
    """Run ``check`` before the first flush that writes, unless the transaction already
    passed it (:meth:`Store.fence_in`)."""

    def before_flush(session: Session, *_: Any) -> None:
        if not session.info.get(_FENCE_CHECKED) and (
                session.new or session.dirty or session.deleted):
            check(session)
            session.info[_FENCE_CHECKED] = True

    event.listen(s, "before_flush", before_flush)


_INSERTS = "continuum.inserts"
_FENCE_CHECKED = "continuum.fence_checked"


def insert_later(s: Session, model: type[Base], rows: Iterable[dict[str, Any]]) -> None:
    """INSERT ``rows`` (column → value; every row of a table with the same columns) into
    ``model``'s table when the :meth:`Store.session` block of ``s`` ends: after its ORM
    objects are flushed and the fence passed, one Core executemany per table for the whole
    block, tables in the order first given (a parent's rows before its children's). The
    rows are not visible to queries of the block. The ORM's bulk INSERT costs per-row
    bookkeeping (4 % of a busy reconciler's time for its events; a fifth of a submit's
    CPU for its rows), and a group commit of N submits would run it N times a table."""
    s.info.setdefault(_INSERTS, {}).setdefault(table_of(model), []).extend(rows)


def add_event(s: Session, type_: str, message: str, *, workflow_id: str | None = None,
              run_id: str | None = None) -> None:
    """Record one event (``type_`` e.g. ``RunPlaced``) with the current time, in the
    transaction of ``s`` (a :meth:`Store.session`), written when the block ends
    (:func:`insert_later`)."""
    insert_later(s, EventRow, ({"workflow_id": workflow_id, "run_id": run_id, "type": type_,
                                "message": message, "at": utcnow()},))


def table_of(model: type[Base]) -> Table:
    """``model``'s table, for Core statements (``insert(table_of(RunRow))`` executes
    as one executemany, where ``insert(RunRow)`` takes the ORM's bulk path)."""
    return cast(Table, model.__table__)


class ColumnRow:
    """Some columns of one row of a table whose key is ``id``, read with SQLAlchemy Core
    (:func:`read_rows`): an attribute reads its column (reading a column that was not
    read raises ``AttributeError``); setting one to a new value records the change,
    which :meth:`Store.write_rows` writes back. The reconciler's hot path writes through
    these instead of ORM objects: loading and flushing ORM rows (identity map,
    attribute instrumentation, unit of work) was most of its CPU per task."""

    __slots__ = ("_values", "_changed")

    def __init__(self, values: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_changed", set())

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"column {name!r} was not read") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._values or self._values[name] != value:
            self._values[name] = value
            self._changed.add(name)

    def values(self) -> dict[str, Any]:
        """Column name → value (as read, with the changes)."""
        return self._values

    def changed(self) -> set[str]:
        """The columns set to a new value since the row was read or written back."""
        return self._changed


def read_rows(s: Session, model: type[Base], ids: Sequence[Any],
              columns: Sequence[str]) -> dict[Any, ColumnRow]:
    """The rows of ``model`` (a table keyed by ``id``) with keys ``ids`` (those that
    exist), by key, with the ``columns`` named (and ``id``), in one Core query per 500
    ids in ``s``'s transaction. Nothing is flushed first: read before writing ORM
    objects in the same session."""
    table = table_of(model)
    names = ["id", *(c for c in columns if c != "id")]
    stmt = select(*(table.c[c] for c in names))
    out: dict[Any, ColumnRow] = {}
    conn = s.connection()
    for chunk in chunks(list(dict.fromkeys(ids))):
        for r in conn.execute(stmt.where(table.c.id.in_(chunk))):
            out[r[0]] = ColumnRow(dict(zip(names, r, strict=True)))
    return out


BACKLOG_TASK_STATES = (TaskState.Waiting, TaskState.Ready)
"""Tasks not yet placed: the backlog that submits are admitted against."""


def backlog_tasks(s: Session) -> int:
    """How many tasks wait to be placed (:data:`BACKLOG_TASK_STATES`): one count over the
    index on ``tasks.state``."""
    return int(s.scalar(select(func.count()).select_from(TaskRow)
                        .where(TaskRow.state.in_(BACKLOG_TASK_STATES))) or 0)


ACTIVE_RUN_STATES = tuple(st for st in RunState if st.active)
""":attr:`RunState.active` as a tuple for SQL ``IN`` (derived from the one definition)."""
TERMINAL_RUN_STATES = tuple(st for st in RunState if st.terminal)
LIVE_WORKFLOW_STATES = (WorkflowState.Pending, WorkflowState.Running)
"""Workflows whose tasks advance and get placed."""


def chunks(ids: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    """``ids`` in slices of at most ``size``, one ``IN (…)`` each: SQLite allows 32,766
    parameters a statement, and short lists keep each query an index lookup."""
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def failed_nodes(s: Session, task_ids: list[int]) -> dict[int, frozenset[str]]:
    """Task id → the node ids where its earlier runs failed (one query); placement then
    prefers another node for the retry."""
    out: dict[int, set[str]] = {}
    for task_id, node in s.execute(
            select(RunRow.task_id, RunRow.node).where(
                RunRow.task_id.in_(task_ids), RunRow.state == RunState.Failed,
                RunRow.node.is_not(None))):
        if node:
            out.setdefault(task_id, set()).add(node)
    return {k: frozenset(v) for k, v in out.items()}


class DocumentCache:
    """Parsed workflow documents by workflow id: a stored document never changes, so each
    is validated once. Not thread-safe: one per owner (the applier, the migration
    controller)."""

    def __init__(self) -> None:
        self._docs: dict[str, WorkflowDocument] = {}
        self._tasks: dict[str, dict[str, Task]] = {}
        self._tenants: dict[str, str] = {}

    def get(self, s: Session, workflow_id: str) -> WorkflowDocument:
        """The document of ``workflow_id`` (which must exist)."""
        doc = self._docs.get(workflow_id)
        if doc is None:  # two columns, not an ORM row (the tenant comes with it)
            row = s.execute(select(WorkflowRow.document, WorkflowRow.tenant)
                            .where(WorkflowRow.id == workflow_id)).one_or_none()
            assert row is not None, workflow_id
            doc = self._docs[workflow_id] = WorkflowDocument.model_validate(row.document)
            self._tenants.setdefault(workflow_id, row.tenant)
        return doc

    def load(self, s: Session, workflow_ids: Iterable[str]) -> None:
        """Read and validate the documents of ``workflow_ids`` not cached yet, one query
        per 500 (a batch of placements needs many; ids that do not exist are skipped)."""
        todo = [w for w in dict.fromkeys(workflow_ids) if w not in self._docs]
        for chunk in chunks(todo):
            for wf_id, document, tenant in s.execute(
                    select(WorkflowRow.id, WorkflowRow.document, WorkflowRow.tenant)
                    .where(WorkflowRow.id.in_(chunk))):
                self._docs[wf_id] = WorkflowDocument.model_validate(document)
                self._tenants.setdefault(wf_id, tenant)

    def task(self, s: Session, workflow_id: str, name: str) -> Task:
        """Task ``name`` of ``workflow_id``'s document (both must exist): the validated
        task a task row's ``spec`` was stored from, without validating it again."""
        tasks = self._tasks.get(workflow_id)
        if tasks is None:
            tasks = self._tasks[workflow_id] = {t.name: t for t in
                                                self.get(s, workflow_id).spec.tasks}
        return tasks[name]

    def tenant(self, s: Session, workflow_id: str) -> str:
        """The tenant of ``workflow_id`` ("" when it does not exist), the one place a
        dispatched run's tenant is read (Slurm sites map it to a user, ``userMap``). A
        workflow's tenant never changes, so it is read once (dispatch asked once per run)."""
        tenant = self._tenants.get(workflow_id)
        if tenant is None:
            tenant = s.scalar(select(WorkflowRow.tenant).where(WorkflowRow.id == workflow_id))
            if tenant is None:
                return ""
            self._tenants[workflow_id] = tenant
        return tenant

    def forget(self, workflow_id: str) -> None:
        """Drop one document (its workflow finished)."""
        self._docs.pop(workflow_id, None)
        self._tasks.pop(workflow_id, None)
        self._tenants.pop(workflow_id, None)

    def keep_only(self, workflow_ids: set[str]) -> None:
        """Drop every document but those of ``workflow_ids`` (the live ones)."""
        self._docs = {k: v for k, v in self._docs.items() if k in workflow_ids}
        self._tasks = {k: v for k, v in self._tasks.items() if k in workflow_ids}
        self._tenants = {k: v for k, v in self._tenants.items() if k in workflow_ids}
