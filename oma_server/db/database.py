"""Opening the database and running work on it without blocking the event loop.

Peewee is synchronous, so every unit of work is a plain function that runs whole, inside one transaction, on a
worker thread (`Database.run`). A transaction is never split across awaits. SQLite gets one worker thread (a
single writer; WAL lets readers in other processes go on); PostgreSQL gets a small pool, one connection per
thread.

`first_write` lets a caller put one more write into the transaction of the first unit of work that changes
something (the idempotency record of a call, oma_server/idempotency.py): while it is set, each unit of work runs
in one outer transaction, and if that transaction wrote anything the hook runs in it before the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import peewee as pw
from loguru import logger

from oma_server import metrics
from oma_server.db.models import database_proxy
from oma_server.errors import InvalidArgument, Unavailable
from oma_server.uninterruptible import finish

T = TypeVar("T")


class FirstWrite:
    """A write to add to the first committed transaction that changes something; `done` once it committed."""

    def __init__(self, write: Callable[[], None]) -> None:
        self.write = write
        self.done = False


#: Set for the duration of one call; copied into the database thread with the rest of the caller's context.
first_write: contextvars.ContextVar[FirstWrite | None] = contextvars.ContextVar("first_write", default=None)

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "foreign_keys": 1,
    "busy_timeout": 10_000,
    "cache_size": -16_000,
}


def default_sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'oma.db').resolve()}"


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    parsed = urlparse(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return parsed._replace(netloc=netloc).geturl()
    return url


def open_peewee(url: str) -> pw.Database:
    """A Peewee database for a `sqlite:///path` or `postgresql://…` URL (not yet connected)."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = parsed.path
        if not path or path == "/":
            raise InvalidArgument(f"database URL {url!r} names no file; use sqlite:///path/to/oma.db")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return pw.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, check_same_thread=False, timeout=10)
    if parsed.scheme in ("postgres", "postgresql"):
        if not parsed.path.strip("/"):
            raise InvalidArgument(f"database URL {redact_url(url)!r} names no database")
        return pw.PostgresqlDatabase(
            parsed.path.lstrip("/"),
            user=parsed.username,
            password=parsed.password,
            host=parsed.hostname or "localhost",
            port=parsed.port or 5432,
            connect_timeout=5,
        )
    raise InvalidArgument(
        f"unsupported database URL scheme {parsed.scheme!r}; use sqlite:///path or postgresql://user@host/db",
        reason="DATABASE_URL_INVALID",
    )


class Database:
    """The one way business logic reaches the database: `await db.run(fn, ...)` or `await db.tx(fn, ...)`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.peewee = open_peewee(url)
        self.kind = "sqlite" if isinstance(self.peewee, pw.SqliteDatabase) else "postgresql"
        workers = 1 if self.kind == "sqlite" else 4
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"db-{self.kind}")
        self._closed = False
        self._local = threading.local()
        database_proxy.initialize(self.peewee)

    def _connect(self) -> None:
        """Connect this thread; an unreachable server becomes Unavailable with a readable one-line message."""
        try:
            self.peewee.connect(reuse_if_open=True)
        except pw.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Unavailable(
                f"cannot reach database {redact_url(self.url)}: {first_line}",
                reason="DATABASE_UNAVAILABLE",
            ) from exc

    def check_connection(self) -> None:
        """Connect and run a trivial query (start-up check)."""
        self._connect()
        self.peewee.execute_sql("SELECT 1")

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], atomic: bool) -> T:
        if self.peewee.is_closed():
            self._connect()
        try:
            hook = first_write.get()
            if hook is not None and not hook.done:
                return self._call_hooked(hook, fn, args, kwargs, atomic)
            if atomic:
                with metrics.db_transaction(), self.peewee.atomic():
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        except pw.InterfaceError:
            # A dropped PostgreSQL connection: reconnect once for the next unit of work.
            with contextlib.suppress(Exception):
                self.peewee.close()
            raise

    def _call_hooked(
        self, hook: FirstWrite, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], atomic: bool
    ) -> T:
        with metrics.db_transaction(), self.peewee.atomic():
            before = self._changes()
            if atomic:
                with self.peewee.atomic():  # a savepoint: what `fn` alone would have committed or rolled back
                    result = fn(*args, **kwargs)
            else:
                result = fn(*args, **kwargs)
            wrote = self._wrote(before)
            if wrote:
                hook.write()
        if wrote:
            hook.done = True
        return result

    def _changes(self) -> int:
        """SQLite's count of rows changed on this connection (PostgreSQL asks its transaction id instead)."""
        if self.kind == "sqlite":
            return int(self.peewee.connection().total_changes)
        return 0

    def _wrote(self, before: int) -> bool:
        if self.kind == "sqlite":
            return int(self.peewee.connection().total_changes) > before
        # A transaction gets an id with its first change (row locks included): none means it wrote nothing.
        return self.peewee.execute_sql("SELECT txid_current_if_assigned()").fetchone()[0] is not None

    async def tx(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` in one transaction on a database thread."""
        return await self._submit(fn, args, kwargs, atomic=True)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` (reads, or work that manages its own transactions) on a database thread."""
        return await self._submit(fn, args, kwargs, atomic=False)

    async def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], atomic: bool) -> T:
        if self._closed:
            raise Unavailable("the database is closed (the server is shutting down)", reason="DATABASE_CLOSED")
        loop = asyncio.get_running_loop()
        # The caller's context goes along (as asyncio.to_thread does): `first_write` is read on the database thread.
        call = functools.partial(contextvars.copy_context().run, self._call, fn, args, kwargs, atomic)
        # A thread cannot be interrupted: a cancelled caller still waits for its transaction to end, so nothing it
        # does next (release a lock, close the database) overtakes work that is still committing.
        return await finish(loop.run_in_executor(self._executor, call))

    def close(self) -> None:
        """Wait for queued work to finish, then close every connection."""
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._close_thread_connection).result()
        self._executor.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.peewee.close()
        logger.debug("database closed")

    def _close_thread_connection(self) -> None:
        if not self.peewee.is_closed():
            self.peewee.close()
