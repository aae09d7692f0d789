"""What one OMA process holds, exclusively: session advisory locks, all of a process's taken on one connection of
its own — `stream:<appliance id>` for the appliance's stream (stream/hub.py), `<job kind>:<job id>` for the task
that runs a job's steps (engine.JobRunner), so each job runs in one process at a time.

Exclusive by construction (PostgreSQL grants a session lock to one session), and freed by the database itself when
the holder's connection goes — a SIGKILLed process's appliances are free as soon as the server sees the socket
close, a host cut off within the TCP keepalives (~15 s). A lock per appliance rather than a lease row: nothing
to renew, no clock to trust. The appliance row's `connected_to`/`session_id` say which process and stream hold
it, for people and for routing; the lock is what makes it true.

If this connection is lost, every lock with it: `check` says so, and the session hub ends every stream here (the
appliances reconnect, to this process or another, and take their locks again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
from loguru import logger

from oma_server.cluster.bus import KEEPALIVES


def lock_key(name: str) -> int:
    """A lock's advisory key: 63 bits of BLAKE2b of its name (collisions are negligible at any fleet size; the
    scheduler's constant key is ASCII text, far from these)."""
    digest = hashlib.blake2b(b"oma:" + name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


HELD_KEYS = (
    "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
    "AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class ProcessLocks:
    def __init__(self, database_url: str, enabled: bool) -> None:
        self.url = database_url
        self.enabled = enabled
        self._connection: Any = None
        self._held: set[str] = set()
        # One thread: the connection is used by one caller at a time, in order.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="process-locks")
        #: called when the connection (and with it every lock) was lost: streams end, job tasks stop
        self.on_lost: list[Callable[[], None]] = []

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _cursor(self) -> Any:
        if self._connection is None or self._connection.closed:
            if self._held:
                # A new connection holds none of the old one's locks.
                logger.warning(
                    "the connection holding this process's locks was lost, with {n} locks", n=len(self._held)
                )
                self._held.clear()
            self._connection = psycopg2.connect(self.url, connect_timeout=5, **KEEPALIVES)
            self._connection.autocommit = True
        return self._connection.cursor()

    def _take(self, name: str) -> bool:
        if name in self._held:
            return True
        with self._cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(name),))
            taken = bool(cursor.fetchone()[0])
        if taken:
            self._held.add(name)
        return taken

    def _give_up(self, name: str) -> None:
        if name not in self._held:
            return
        self._held.discard(name)
        with contextlib.suppress(psycopg2.Error), self._cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", (lock_key(name),))

    def _unheld(self, names: list[str]) -> set[str]:
        with self._cursor() as cursor:
            cursor.execute(HELD_KEYS)
            held = {int(row[0]) for row in cursor.fetchall()}
        return {a for a in names if lock_key(a) not in held}

    def _check(self) -> bool:
        """Whether every lock this process thinks it holds is still held (its connection is alive)."""
        if not self._held:
            return True
        held_before = set(self._held)
        try:
            with self._cursor() as cursor:
                cursor.execute("SELECT 1")
        except psycopg2.Error:
            with contextlib.suppress(psycopg2.Error):
                self._connection.close()
            self._held.clear()
            return False
        return self._held == held_before

    async def take(self, name: str) -> bool:
        """Hold the lock (True), or another process does (False). True at once on SQLite."""
        return True if not self.enabled else bool(await self._call(self._take, name))

    async def give_up(self, name: str) -> None:
        if self.enabled:
            await self._call(self._give_up, name)

    async def unheld(self, names: Iterable[str]) -> set[str]:
        """Those of `names` no process holds."""
        ids = list(names)
        if not self.enabled or not ids:
            return set()
        return set(await self._call(self._unheld, ids))

    async def check(self) -> bool:
        """Whether every lock is still held; when not, the `on_lost` hooks run (once per loss)."""
        if not self.enabled or await self._call(self._check):
            return True
        for hook in self.on_lost:
            hook()
        return False

    async def close(self) -> None:
        def close() -> None:
            self._held.clear()
            if self._connection is not None:
                with contextlib.suppress(psycopg2.Error):
                    self._connection.close()
            self._connection = None

        if self.enabled:
            await self._call(close)
        self._thread.shutdown(wait=False)
