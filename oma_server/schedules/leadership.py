"""Which OMA process runs the scheduler when several share one PostgreSQL (DESIGN.md §8): the one that holds a
session advisory lock, on a connection of its own, so the lock goes when the process (or its connection) does and
another process takes over at its next try. On SQLite (one process per database file) this process always leads.

A connection of its own, not one of the database runner's: a session lock belongs to the connection that took it,
and the runner's workers each have theirs.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import psycopg2
from loguru import logger

#: the advisory lock's key: "oma-sche" as a 64-bit integer, a constant every OMA process uses
LOCK_KEY = int.from_bytes(b"oma-sche", "big") & 0x7FFF_FFFF_FFFF_FFFF


class Leadership:
    def __init__(self, database_url: str, kind: str) -> None:
        self.url = database_url
        self.kind = kind
        self._connection: Any = None
        self._lock = threading.Lock()
        self.leading = kind != "postgresql"

    def try_lead(self) -> bool:
        """Whether this process leads now (blocking: run it in a thread). Taking the lock again while holding it
        is a no-op that says yes; a lost connection means the lock is lost too, and the next try reconnects."""
        if self.kind != "postgresql":
            return True
        with self._lock:
            try:
                held = self.leading
                if self._connection is None or self._connection.closed:
                    held = False  # a new connection holds nothing
                    self._connection = psycopg2.connect(self.url, connect_timeout=5)
                    self._connection.autocommit = True
                with self._connection.cursor() as cursor:
                    if held:
                        # Held already: check the connection is alive rather than take the lock again (a session
                        # lock counts its takes; one per tick would pile up).
                        cursor.execute("SELECT 1")
                        got = True
                    else:
                        cursor.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
                        got = bool(cursor.fetchone()[0])
            except psycopg2.Error as exc:
                logger.warning("scheduler leadership unknown (database: {e}); not leading", e=str(exc).strip())
                self._close()
                got = False
            if got != self.leading:
                logger.info("this OMA process {what} the scheduler", what="now runs" if got else "does not run")
            self.leading = got
            return got

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg2.Error):
                if not self._connection.closed:
                    # Unlock before closing: the server ends a closed session's backend (and frees its locks) a
                    # little later, so another process's next try could still find the lock taken.
                    with self._connection.cursor() as cursor:
                        cursor.execute("SELECT pg_advisory_unlock_all()")
                self._connection.close()
        self._connection = None

    def release(self) -> None:
        """Give the lead up (at stop): another process takes over at its next try."""
        with self._lock:
            self._close()
            self.leading = self.kind != "postgresql"
