"""LISTEN/NOTIFY between OMA processes on one PostgreSQL: a dedicated connection listens, notifications are handed
to their channel's handlers on the event loop.

NOTIFY is a wake-up, not a message queue: it is lost while a listener is disconnected, so every use has a polling
fallback (and `on_reconnect` hooks run after a reconnect to catch up at once). A notification sent inside a
transaction is delivered at its commit, in commit order — never before what it announces is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import peewee as pw
import psycopg2
from loguru import logger

from oma_server.db.models import database_proxy

#: TCP keepalives on the dedicated connections: a process cut off from the database notices within ~15 s
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}
RECONNECT_S = 1.0

Handler = Callable[[str], None]


def notify(channel: str, payload: str) -> None:
    """Send a notification from inside the current transaction (delivered at its commit); nothing on SQLite."""
    db = database_proxy.obj
    if isinstance(db, pw.PostgresqlDatabase):
        db.execute_sql("SELECT pg_notify(%s, %s)", (channel, payload))


class ClusterBus:
    def __init__(self, database_url: str, enabled: bool) -> None:
        self.url = database_url
        self.enabled = enabled
        self._handlers: dict[str, list[Handler]] = {}
        self.on_reconnect: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None

    def listen(self, channel: str, handler: Handler) -> None:
        """Call `handler(payload)` on the event loop for every notification on `channel` (before `start`)."""
        self._handlers.setdefault(channel, []).append(handler)

    async def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="cluster-bus")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._close()

    def _connect(self) -> Any:
        connection = psycopg2.connect(self.url, connect_timeout=5, **KEEPALIVES)
        connection.autocommit = True
        with connection.cursor() as cursor:
            for channel in self._handlers:
                cursor.execute(f'LISTEN "{channel}"')
        return connection

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg2.Error):
                self._connection.close()
        self._connection = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while True:
            try:
                self._connection = await asyncio.to_thread(self._connect)
                if not first:
                    logger.info("cluster notifications listening again; catching up")
                    for hook in self.on_reconnect:
                        hook()
                first = False
                readable = asyncio.Event()
                fd = self._connection.fileno()
                loop.add_reader(fd, readable.set)
                try:
                    while True:
                        await readable.wait()
                        readable.clear()
                        self._connection.poll()
                        self._dispatch()
                finally:
                    loop.remove_reader(fd)
            except asyncio.CancelledError:
                raise
            except (psycopg2.Error, OSError) as exc:
                logger.warning("cluster notifications lost ({e}); reconnecting", e=str(exc).strip())
            self._close()
            await asyncio.sleep(RECONNECT_S)

    def _dispatch(self) -> None:
        notifies = self._connection.notifies
        while notifies:
            note = notifies.pop(0)
            for handler in self._handlers.get(note.channel, ()):
                try:
                    handler(note.payload)
                except Exception:
                    logger.opt(exception=True).error("cluster notification handler failed ({c})", c=note.channel)
