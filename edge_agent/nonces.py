"""The nonces of obeyed commands, kept until their command expires (:class:`NonceStore`).

A signed command may be obeyed once: its nonce is remembered until its ``expires_at``
(after that the command is refused as expired anyway), in a SQLite file next to the
outbox, so an agent restart does not reopen the replay window. The set is bounded:
commands live at most :data:`edge_agent.protocol.signing.MAX_COMMAND_TTL_S`, expired
nonces are dropped on every insert, and past ``max_entries`` the soonest-expiring are
dropped too (logged: a replay of one of those would then be obeyed).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS nonces_expires ON nonces (expires);
"""


class NonceStore:
    """Seen nonces with their expiry (s since the epoch), persisted at ``path``."""

    def __init__(self, path: Path, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def add(self, nonce: str, expires: float, now: float) -> bool:
        """Remember ``nonce`` until ``expires``; False when it is already remembered (a
        replay). Expired entries are dropped first."""
        with self._lock:
            self._db.execute("DELETE FROM nonces WHERE expires < ?", (now,))
            try:
                self._db.execute("INSERT INTO nonces (nonce, expires) VALUES (?, ?)",
                                 (nonce, expires))
            except sqlite3.IntegrityError:
                return False
            (n,) = self._db.execute("SELECT COUNT(*) FROM nonces").fetchone()
            if n > self.max_entries:
                self._db.execute(
                    "DELETE FROM nonces WHERE nonce IN (SELECT nonce FROM nonces "
                    "ORDER BY expires LIMIT ?)", (n - self.max_entries,))
                log.warning("more than %d unexpired command nonces; forgot the %d expiring "
                            "soonest", self.max_entries, n - self.max_entries)
            return True

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM nonces").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
