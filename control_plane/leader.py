"""Replicas and their one leader: election, the lease with its fencing epoch, fenced writes.

Any number of ``continuum server`` replicas share one database. Every replica serves
the API; exactly one, the **leader**, runs the reconciler loop (and with it the
migration controller and model retraining). Leadership is a row of the ``leases`` table
(:class:`~control_plane.store.LeaseRow`): ``holder``, a fencing ``epoch`` that grows by
one at every change of holder, and ``expires_at``.

Electors (:class:`Elector`):

* :class:`DatabaseElector` (default). On PostgreSQL the leader also holds the
  session-level advisory lock :data:`ADVISORY_KEY` on a dedicated connection. A
  follower that obtains that lock knows the leader's database session is gone (its
  process died, or its connection did) and takes over at once; a follower also takes
  over when the lease row expired (database clock) while someone else still holds the
  lock — a leader paused (SIGSTOP, a long GC, a frozen VM) for longer than the TTL. On
  SQLite (one replica only) the same row logic runs without the lock.
* :class:`KubernetesLeaseElector`: a ``coordination.k8s.io/v1`` Lease decides; the
  leader writes the Lease's ``leaseTransitions`` as its epoch into the same lease row,
  so fencing is the same mechanism.

Every elector step runs every ``leader_lease_s / 3``. **Takeover bound** (default
``leader_lease_s`` = 6 s): after the leader process dies, a follower leads within
``leader_lease_s / 3`` (2 s) plus one step, on PostgreSQL (the server ends a dead
client's session, and its advisory lock, as soon as the connection closes); when the
leader is paused or cut off without its connection closing, within ``leader_lease_s
+ leader_lease_s / 3`` (8 s). A leader that could not renew for ``leader_lease_s`` by
its own clock steps down by itself.

**Fencing.** The leader-only components write through a fenced store view
(:meth:`control_plane.store.Store.fenced`): each write transaction first runs
:meth:`Fence.check` — ``UPDATE leases SET epoch = epoch WHERE name = :n AND holder =
:me AND epoch = :epoch`` — and rolls back with :class:`Fenced` when no row matches. On
PostgreSQL that row lock also orders the write against a concurrent takeover (which
``SELECT … FOR UPDATE``s the row): either the write commits before the epoch grows,
or it is refused. Before every backend side effect (submit, cancel, release) the
applier runs the fence in a transaction of its own. A paused old leader that wakes up
therefore cannot change run state; the one thing it may still do is one backend call
already past its check — harmless, since submission is idempotent by request id (the
run id): the new leader's submit of the same run finds the same work.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from control_plane.actions import Action
from control_plane.store import LeaseRow, Store, utcnow

log = logging.getLogger(__name__)

LEASE_NAME = "reconciler"
"""The lease of the reconcile loop (one leader per database)."""
ADVISORY_KEY = 0x636F6E74696E7575  # b"continuu"
"""The PostgreSQL advisory lock key the leader holds (a 64-bit constant)."""
WAKE_CHANNEL = "continuum_wake"
"""PostgreSQL NOTIFY channel: a replica that wrote desired state wakes the leader."""


class Fenced(Exception):
    """This replica's lease was taken over (or lost): it may not write as the leader."""


def replica_id() -> str:
    """This process's identity: ``<hostname>-<pid>-<6 hex digits>``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Lease:
    """A held (or observed) lease: ``epoch`` is the fencing token."""

    name: str
    holder: str
    epoch: int
    api_url: str = ""


@dataclass(frozen=True)
class Fence:
    """Checks that ``holder`` still holds lease ``name`` at ``epoch``."""

    name: str
    holder: str
    epoch: int

    def check(self, s: Session) -> None:
        """Run inside a write transaction, before its writes.

        Raises:
            Fenced: the lease row has another holder or epoch (the transaction is then
                rolled back by the session's owner).
        """
        n = s.connection().execute(
            text("UPDATE leases SET epoch = epoch WHERE name = :n AND holder = :h "
                 "AND epoch = :e"), {"n": self.name, "h": self.holder, "e": self.epoch}
        ).rowcount
        if n == 0:
            row = s.connection().execute(
                text("SELECT holder, epoch FROM leases WHERE name = :n"), {"n": self.name}
            ).first()
            by = f"epoch {row.epoch} of {row.holder}" if row is not None else "no lease"
            raise Fenced(f"fenced by {by} (this replica held epoch {self.epoch})")


def current_leader(store: Store, name: str = LEASE_NAME) -> Lease | None:
    """The lease row as stored (its holder may have died; see ``expires_at``), or None."""
    with store.session() as s:
        row = s.get(LeaseRow, name)
        return Lease(row.name, row.holder, row.epoch, row.api_url) if row is not None else None


class Elector(Protocol):
    """Decides who leads. :meth:`step` is called every ``ttl_s / 3`` by
    :class:`Leadership`."""

    identity: str
    ttl_s: float

    def step(self) -> Lease | None:
        """Acquire or renew: the lease this replica holds now, or None (a follower).

        Raises:
            Exception: the database (or apiserver) could not be reached; the caller
                keeps the previous answer until its own deadline passes.
        """
        ...

    def resign(self) -> None:
        """Give up whatever this replica holds (it stopped leading)."""
        ...

    def close(self) -> None:
        """Release connections (a clean shutdown; the lease row is left to expire or
        to be taken over)."""
        ...


def _take_or_renew(s: Session, name: str, me: str, api_url: str, ttl_s: float,
                   now: datetime, *, held: int | None, may_take: bool,
                   epoch: int | None = None) -> Lease | None:
    """The lease-row half of an elector step, in transaction ``s`` (row locked on
    PostgreSQL): renew it when ``me`` holds epoch ``held``; take it (epoch + 1, or
    ``epoch`` when given and larger) when ``may_take`` or the row expired; else None."""
    row = s.scalars(select(LeaseRow).where(LeaseRow.name == name).with_for_update()).first()
    until = now + timedelta(seconds=ttl_s)
    if row is None:
        if not may_take:
            return None
        row = LeaseRow(name=name, holder=me, epoch=epoch or 1, api_url=api_url,
                       acquired_at=now, renewed_at=now, expires_at=until)
        s.add(row)
        return Lease(name, me, row.epoch, api_url)
    if row.holder == me and row.epoch == held:
        row.renewed_at, row.expires_at, row.api_url = now, until, api_url
        return Lease(name, me, row.epoch, api_url)
    if may_take or row.expires_at <= now:
        # the epoch only grows, also when the Lease's count restarts below the row's
        row.epoch = max(epoch, row.epoch + 1) if epoch is not None else row.epoch + 1
        row.holder, row.api_url = me, api_url
        row.acquired_at, row.renewed_at, row.expires_at = now, now, until
        return Lease(name, me, row.epoch, api_url)
    return None


class DatabaseElector:
    """Election on the shared database (see the module docstring).

    ``store``: the shared database; ``api_url``: this replica's advertised API URL
    (written into the lease row); ``ttl_s``: the lease TTL (``leader_lease_s``).
    """

    def __init__(self, store: Store, api_url: str, ttl_s: float, *,
                 identity: str | None = None, name: str = LEASE_NAME) -> None:
        self.store = store
        self.api_url = api_url
        self.ttl_s = ttl_s
        self.identity = identity or replica_id()
        self.name = name
        self.postgres = store.engine.dialect.name == "postgresql"
        self._conn: Connection | None = None
        self._locked = False
        self._no_lock_until = 0.0
        self._held: int | None = None

    def _try_lock(self) -> bool:
        """Get the advisory lock on this replica's dedicated connection: True only when
        this call obtained it (then whoever held it before has no session any more);
        False when another session holds it or this replica already did. A broken
        connection counts as not held, and is opened again."""
        if self._conn is not None:
            try:
                if self._locked:
                    self._conn.execute(text("SELECT 1"))
                    return False
            except Exception as e:
                log.warning("leader lock connection lost: %s", e)
                self._drop_conn()
        if time.monotonic() < self._no_lock_until:
            return False  # just stepped down: the replica that leads now gets the lock first
        if self._conn is None:
            conn = self.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.detach()  # closed for real on close(): a lock must not go back to a pool
            self._conn = conn
        try:
            self._locked = bool(self._conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                                   {"k": ADVISORY_KEY}).scalar())
        except Exception:
            self._drop_conn()
            raise
        return self._locked

    def _unlock(self) -> None:
        """Let go of the lock (this replica no longer leads) and leave it to the one that
        does for one TTL: else this replica could obtain it again at once and take the
        lease back from a leader that took it by expiry (safe, but a needless change)."""
        if self._conn is not None and self._locked:
            self._no_lock_until = time.monotonic() + self.ttl_s
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                self._locked = False
            except Exception:
                self._drop_conn()

    def _drop_conn(self) -> None:
        conn, self._conn, self._locked = self._conn, None, False
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the leader lock connection failed", exc_info=True)

    def step(self) -> Lease | None:
        """See :meth:`Elector.step`."""
        # obtaining the lock now while another holds the row: that holder's session is
        # gone. On SQLite there is one replica: it may always take the row.
        obtained = self._try_lock() if self.postgres else True
        with self.store.session() as s:
            now = (s.scalar(text("SELECT clock_timestamp()")) if self.postgres else utcnow())
            lease = _take_or_renew(s, self.name, self.identity, self.api_url, self.ttl_s,
                                   now, held=self._held, may_take=obtained)
        if lease is None and self.postgres:
            # not the leader (a paused one that was fenced, or the row is another's):
            # let the one who leads get the lock
            self._unlock()
        self._held = lease.epoch if lease is not None else None
        return lease

    def resign(self) -> None:
        """See :meth:`Elector.resign` (the row is left as is: it is someone else's now,
        or it expires)."""
        self._held = None
        self._unlock()

    def close(self) -> None:
        """Close the dedicated connection (its session, and any lock, end with it)."""
        self._held = None
        self._drop_conn()


class LeaseLock(Protocol):
    """A lock held by one identity at a time, counting its changes of holder
    (:class:`adapters.kubernetes.lease.LeaseLock`, a coordination.k8s.io/v1 Lease)."""

    def acquire(self, identity: str, ttl_s: float) -> int | None:
        """Take or renew for ``identity``: the count of holder changes when held, else
        None."""
        ...


class KubernetesLeaseElector:
    """Election through a ``coordination.k8s.io/v1`` Lease (``holderIdentity``,
    ``leaseDurationSeconds``, ``renewTime``; ``leaseTransitions`` is the epoch).

    The Lease (``lock``) decides who leads; the leader then writes the epoch into the
    database's lease row (taking it over whatever it says), so its writes are fenced
    exactly as with :class:`DatabaseElector`.
    """

    def __init__(self, store: Store, lock: LeaseLock, api_url: str, ttl_s: float, *,
                 identity: str | None = None, name: str = LEASE_NAME) -> None:
        self.store = store
        self.lock = lock
        self.api_url = api_url
        self.ttl_s = ttl_s
        self.identity = identity or replica_id()
        self.name = name
        self._held: int | None = None

    def step(self) -> Lease | None:
        """See :meth:`Elector.step`."""
        epoch = self.lock.acquire(self.identity, self.ttl_s)
        if epoch is None:
            self._held = None
            return None
        with self.store.session() as s:
            lease = _take_or_renew(s, self.name, self.identity, self.api_url, self.ttl_s,
                                   utcnow(), held=self._held, may_take=True, epoch=epoch)
        self._held = lease.epoch if lease is not None else None
        return lease

    def resign(self) -> None:
        self._held = None

    def close(self) -> None:
        self.resign()


class NotLeader(Exception):
    """A request needs the leader's loop and this replica is a follower. ``leader``:
    the current lease (its ``api_url`` to redirect to), or None when nobody leads."""

    def __init__(self, leader: Lease | None):
        self.leader = leader
        super().__init__("this replica is not the leader"
                         + (f"; the leader is {leader.holder} at {leader.api_url}"
                            if leader is not None else "; no leader is elected now"))


class Leadership:
    """Runs the elector every ``ttl_s / 3`` and turns its answers into transitions.

    ``on_lead(lease)``: this replica became leader (start the leader-only work);
    ``on_lose(reason)``: it stopped leading (stop that work; called on the elector's
    thread, or on the thread that called :meth:`lost`). ``on_role``: called after every
    transition with the new role (metrics).
    """

    def __init__(self, elector: Elector, store: Store, on_lead: Callable[[Lease], None],
                 on_lose: Callable[[str], None],
                 on_role: Callable[[bool], None] = lambda _leading: None) -> None:
        self.elector = elector
        self.store = store
        self.on_lead, self.on_lose, self.on_role = on_lead, on_lose, on_role
        self._lease: Lease | None = None
        self._renewed_at = 0.0
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._lost: str | None = None
        self._term = threading.local()
        """Per thread: the lease whose term the thread works for (see :meth:`bind`)."""

    @property
    def identity(self) -> str:
        return self.elector.identity

    @property
    def lease(self) -> Lease | None:
        """The lease this replica holds, or None (a follower)."""
        return self._lease

    @property
    def leading(self) -> bool:
        return self._lease is not None

    def bind(self, lease: Lease) -> None:
        """Bind the calling thread to the term of ``lease``: from now on its fenced
        writes pass only while this replica still holds that epoch. The leader-only
        loop of a term calls it first, so a loop of an ended term that has not stopped
        yet cannot write under a later term of the same replica (lost, then led again).
        A thread that never bound (a test driving a cycle by hand) writes under the
        current term."""
        self._term.lease = lease

    def check(self, s: Session) -> None:
        """The fence of the leader-only components' store (see
        :meth:`control_plane.store.Store.fenced`).

        Raises:
            Fenced: this replica does not lead (any more), or the calling thread's term
                (:meth:`bind`) is not the current one.
        """
        lease = self._lease
        if lease is None:
            raise Fenced("this replica is not the leader")
        term: Lease | None = getattr(self._term, "lease", None)
        if term is not None and term.epoch != lease.epoch:
            raise Fenced(f"the term of epoch {term.epoch} ended (this replica now leads "
                         f"epoch {lease.epoch})")
        Fence(lease.name, lease.holder, lease.epoch).check(s)

    def step(self) -> None:
        """One election step and the transition it implies (tests call it directly)."""
        lost, self._lost = self._lost, None
        if lost is not None:
            with self._lock:
                if self._lease is not None:
                    self._demote(lost)
        try:
            lease = self.elector.step()
        except Exception as e:
            with self._lock:
                if self._lease is not None and (
                        time.monotonic() - self._renewed_at > self.elector.ttl_s):
                    self._demote(f"lease not renewed for {self.elector.ttl_s:g}s ({e})")
                else:
                    log.warning("leader election step failed: %s", e)
            return
        with self._lock:
            if lease is not None:
                self._renewed_at = time.monotonic()
            old = self._lease
            if lease is not None and (old is None or old.epoch != lease.epoch):
                if old is not None:
                    self._demote(f"epoch {old.epoch} replaced by {lease.epoch}")
                self._lease = lease
                log.info("became leader, epoch %d (%s)", lease.epoch, lease.holder)
                self.on_role(True)
                self.on_lead(lease)
            elif lease is None and old is not None:
                now = current_leader(self.store, old.name)
                self._demote(f"fenced by epoch {now.epoch} of {now.holder}" if now is not None
                             and now.epoch != old.epoch else "lease lost")

    def lost(self, reason: str) -> None:
        """A fenced write says this replica no longer leads: the elector's thread
        demotes it at once (this never blocks, so the leader-only threads may call it)."""
        self._lost = reason
        self._wake.set()

    def wake(self) -> None:
        """Run the next step now (after :meth:`lost`, or to stop)."""
        self._wake.set()

    def _demote(self, reason: str) -> None:
        old, self._lease = self._lease, None
        try:
            self.elector.resign()
        except Exception:
            log.debug("resign failed", exc_info=True)
        log.warning("lost leadership (epoch %s): %s", old.epoch if old else "-", reason)
        self.on_role(False)
        self.on_lose(reason)

    def run_forever(self, stop: threading.Event) -> None:
        """Step every ``ttl_s / 3`` until ``stop``; then close the elector. The lease row
        is left as it is: another replica takes it over (at once on PostgreSQL, whose
        advisory lock ended with the connection), and until then this replica's fence
        still passes (tests drive a stopped control plane's cycle by hand)."""
        every = self.elector.ttl_s / 3
        while not stop.is_set():
            t0 = time.monotonic()
            self.step()
            self._wake.wait(max(0.0, every - (time.monotonic() - t0)))
            self._wake.clear()
        self.elector.close()

    def state(self) -> dict[str, Any]:
        """``{"role", "replica", "epoch", "leader": {"replica", "epoch", "apiUrl"} | None}``
        for ``/healthz``."""
        lease = self._lease
        try:
            row = current_leader(self.store)
        except Exception:
            row = None
        return {"role": "leader" if lease is not None else "follower",
                "replica": self.identity, "epoch": lease.epoch if lease else None,
                "leader": {"replica": row.holder, "epoch": row.epoch, "apiUrl": row.api_url}
                if row is not None else None}


def notify_wake_in(s: Session) -> None:
    """PostgreSQL: ``NOTIFY`` :data:`WAKE_CHANNEL` within the transaction of ``s``, so the
    leader wakes when it commits (PostgreSQL folds the same notification sent several
    times in one transaction into one). Nothing on other databases."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_notify(:c, '')"), {"c": WAKE_CHANNEL})


def notify_wake(store: Store) -> None:
    """PostgreSQL: ``NOTIFY`` :data:`WAKE_CHANNEL`, so the leader (whichever replica it
    is) runs its next cycle now. Nothing on other databases; a failure is only logged
    (the leader's next cycle comes within ``reconcile_interval_s`` anyway)."""
    if store.engine.dialect.name != "postgresql":
        return
    try:
        with store.engine.connect() as c:
            c.execute(text("SELECT pg_notify(:c, '')"), {"c": WAKE_CHANNEL})
            c.commit()
    except Exception as e:
        log.warning("could not notify the leader (it acts within its interval): %s", e)


def listen_for_wakes(store: Store, wake: Callable[[], None], stop: threading.Event) -> None:
    """PostgreSQL: ``LISTEN`` on :data:`WAKE_CHANNEL` and call ``wake`` per notification
    until ``stop``; a lost connection is opened again after a second."""
    while not stop.is_set():
        try:
            raw = store.engine.raw_connection()
            pg: Any = raw.dbapi_connection  # psycopg's own connection (notifies())
            raw.detach()  # never back to the pool: it is LISTENing
            try:
                pg.autocommit = True
                pg.execute(f"LISTEN {WAKE_CHANNEL}")
                while not stop.is_set():
                    # a short timeout: ``stop`` is seen within 0.25 s (a server's stop
                    # waits for this thread)
                    for _ in pg.notifies(timeout=0.25):
                        wake()
            finally:
                pg.close()
        except Exception as e:
            log.warning("wake-up listener: %s; listening again in 1 s", e)
            stop.wait(1.0)


class LeaderLoop:
    """What the API sees of the reconcile loop on a replica (:class:`control_plane.deps.Loop`):
    ``request`` raises :class:`NotLeader` on a follower; ``wake`` wakes the local loop
    and, through ``notify``, the leader's."""

    def __init__(self, loop: Any, leadership: Leadership,
                 notify: Callable[[], None] = lambda: None) -> None:
        self._loop = loop
        self.leadership = leadership
        self._notify = notify

    @property
    def last_cycle_at(self) -> float | None:
        at: float | None = self._loop.last_cycle_at
        return at

    @property
    def leading(self) -> bool:
        return self.leadership.leading

    def leader_state(self) -> dict[str, Any]:
        """See :meth:`Leadership.state`."""
        return self.leadership.state()

    def wake(self) -> None:
        self._loop.wake()
        self._notify()

    def request(self, action: Action) -> Future[Any]:
        """See :meth:`control_plane.reconciler.Reconciler.request`.

        Raises:
            NotLeader: this replica is a follower.
        """
        if not self.leadership.leading:
            raise NotLeader(current_leader(self.leadership.store))
        fut: Future[Any] = self._loop.request(action)
        return fut


__all__ = ["ADVISORY_KEY", "DatabaseElector", "Elector", "Fence", "Fenced",
           "KubernetesLeaseElector", "LEASE_NAME", "Lease", "LeaseLock", "LeaderLoop", "Leadership",
           "NotLeader", "WAKE_CHANNEL", "current_leader", "listen_for_wakes", "notify_wake",
           "replica_id"]
