"""Safe retries of mutating calls (AIP-155): one answer per (method, request_id), stored in the database.

A client that lost an answer repeats its call with the same `request_id`. The first call's answer is kept in
`idempotency_record`, keyed by (method, request_id), with a fingerprint of the request (sha256 of its deterministic
encoding without the request_id) and an expiry (`--idempotency-ttl`, default 24 h; the janitor purges expired rows):

- the same key with the same request gets the stored answer, also after a restart, and changes nothing;
- the same key with another request is INVALID_ARGUMENT (REQUEST_ID_REUSED, field request_id);
- the row is inserted inside the transaction of the call's first change (`Database` runs the `FirstWrite` hook
  there), so a crash cannot leave a change without its row: a retry never makes a second change. The answer is
  added right after the handler returns. A row without an answer (the first call still runs, or its server stopped
  between its change and its answer, or it failed after changing something) is ABORTED (REQUEST_PENDING): retry,
  or read the resource; it is never run a second time.
- concurrent repeats in one process wait for the first and share its answer; across processes the second one's
  change is rolled back with its failed insert (ABORTED, REQUEST_PENDING).

A call that changes nothing (cancelling a job that already ended, say) still gets its answer recorded. A call that
fails without changing anything records nothing: its retry runs again. Hand-written: the store is a few queries
on our own Database and its hook; no library keeps answers in the transaction of the application's own change.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import peewee as pw
from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database, FirstWrite, first_write
from oma_server.db.models import IdempotencyRecord
from oma_server.errors import Aborted, InvalidArgument

T = TypeVar("T")

DEFAULT_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class RequestKey:
    """Which call this is: its method, the client's request_id and the fingerprint of the rest of the request."""

    method: str
    request_id: str
    fingerprint: str


def fingerprint(encoded_without_request_id: bytes) -> str:
    return hashlib.sha256(encoded_without_request_id).hexdigest()


def _reused(key: RequestKey) -> InvalidArgument:
    return InvalidArgument(
        f"request_id {key.request_id!r} was already used for a different {key.method.rsplit('/', 1)[-1]} request; "
        "a retry must repeat the request unchanged, a new request needs a new request_id",
        reason="REQUEST_ID_REUSED",
        field="request_id",
        request_id=key.request_id,
    )


def _pending(key: RequestKey) -> Aborted:
    return Aborted(
        f"the first call with request_id {key.request_id!r} changed something but its answer is not recorded: it is "
        "still running, or its server stopped (or it failed) before answering; retry in a moment, or read the "
        "resource to see its state — it is not run a second time",
        reason="REQUEST_PENDING",
        request_id=key.request_id,
    )


def purge_expired(now: datetime) -> int:
    """Delete the records whose expiry passed (on a database thread); returns how many."""
    return int(IdempotencyRecord.delete().where(IdempotencyRecord.expires_at <= now).execute())


class IdempotencyStore:
    """Runs a call once per key; see the module docstring."""

    def __init__(self, db: Database, clock: Clock, ttl: timedelta = DEFAULT_TTL) -> None:
        self.db = db
        self.clock = clock
        self.ttl = ttl
        self._inflight: dict[tuple[str, str], tuple[str, asyncio.Future[bytes]]] = {}

    async def once(
        self,
        key: RequestKey,
        work: Callable[[], Awaitable[T]],
        dump: Callable[[T], bytes],
        load: Callable[[bytes], T],
    ) -> T:
        """`work()`'s answer, or the answer stored for `key` (decoded with `load`) when it ran before."""
        slot = (key.method, key.request_id)
        running = self._inflight.get(slot)
        if running is not None:
            if running[0] != key.fingerprint:
                raise _reused(key)
            return load(await asyncio.shield(running[1]))
        # Registered before the first await: a repeat arriving meanwhile waits for this call instead of racing it.
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[slot] = (key.fingerprint, future)
        try:
            stored = await self.db.run(self._stored, key, self.clock.now())
            if stored is not None:
                logger.bind(rpc=key.method, request_id=key.request_id).info("answered a retry from its first answer")
                result, answer = load(stored), stored
            else:
                result, answer = await self._first(key, work, dump)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved: the waiters (if any) get it, nobody else must
            raise
        else:
            future.set_result(answer)
            return result
        finally:
            del self._inflight[slot]

    async def _first(
        self, key: RequestKey, work: Callable[[], Awaitable[T]], dump: Callable[[T], bytes]
    ) -> tuple[T, bytes]:
        now = self.clock.now()
        call_id = uuid.uuid4().hex
        hook = FirstWrite(lambda: self._claim(key, now, call_id))
        token = first_write.set(hook)
        try:
            result = await work()
        finally:
            first_write.reset(token)
            # Tasks the call spawned carry a copy of its context: once the call is over, their writes are theirs.
            hook.done = True
        encoded = dump(result)
        await self.db.tx(self._answer, key, encoded, now, call_id)
        return result, encoded

    @staticmethod
    def _stored(key: RequestKey, now: datetime) -> bytes | None:
        row = IdempotencyRecord.get_or_none(
            (IdempotencyRecord.method == key.method) & (IdempotencyRecord.request_id == key.request_id)
        )
        if row is None or row.expires_at <= now:
            return None
        if row.fingerprint != key.fingerprint:
            raise _reused(key)
        if row.response is None:
            raise _pending(key)
        return bytes(row.response)

    def _row(self, key: RequestKey, now: datetime, call_id: str, response: bytes | None) -> dict[str, object]:
        return {
            "method": key.method,
            "request_id": key.request_id,
            "fingerprint": key.fingerprint,
            "call_id": call_id,
            "response": response,
            "created_at": now,
            "expires_at": now + self.ttl,
        }

    def _claim(self, key: RequestKey, now: datetime, call_id: str) -> None:
        """In the transaction of the call's first change: the row that makes every retry find this call."""
        where = (IdempotencyRecord.method == key.method) & (IdempotencyRecord.request_id == key.request_id)
        IdempotencyRecord.delete().where(where & (IdempotencyRecord.expires_at <= now)).execute()
        try:
            with self.db.peewee.atomic():  # a savepoint: PostgreSQL needs one to go on after a failed insert
                IdempotencyRecord.insert(**self._row(key, now, call_id, None)).execute()
        except pw.IntegrityError:
            row = IdempotencyRecord.get_or_none(where)
            if row is not None and row.call_id == call_id:
                return  # a unit of work of this same call that ran beside this one claimed it first
            # Another process claimed the key first: this call's change is rolled back with this transaction.
            raise _pending(key) from None

    def _answer(self, key: RequestKey, encoded: bytes, now: datetime, call_id: str) -> None:
        where = (IdempotencyRecord.method == key.method) & (IdempotencyRecord.request_id == key.request_id)
        if IdempotencyRecord.update(response=encoded).where(where & (IdempotencyRecord.call_id == call_id)).execute():
            return
        # Nothing changed (the call was a no-op): the answer is recorded all the same, so a retry gets it again.
        IdempotencyRecord.delete().where(where & (IdempotencyRecord.expires_at <= now)).execute()
        IdempotencyRecord.insert(**self._row(key, now, call_id, encoded)).on_conflict_ignore().execute()
