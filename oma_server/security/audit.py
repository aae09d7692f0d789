"""The audit log: every mutating RPC — who called it, which method, on which resource, from where, when, and how it
ended — kept in the database and listed by the admin-only `AccessService.ListAuditEntries` (`omactl audit`).

The access interceptor records a call in two steps: an entry before the handler runs (outcome UNFINISHED), its
outcome after (OK, or the gRPC status and the ErrorInfo reason). An OMA killed mid-call leaves the entry UNFINISHED,
so an attempt is never lost. The same goes for refused calls (no, a bad or a too-low token): an attempt to mutate
without the right to is what an audit is for. Nothing of a request body is kept but the id of the resource it names
(`resource_of`): request bodies carry credentials (an enrollment's answer, a token's secret) that must not reach a
table an admin lists.

Entries older than the retention (`--audit-retention-days`, 365 by default) are pruned at start and daily.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from loguru import logger

from oma_server.db.database import Database
from oma_server.db.models import AuditEntry, utcnow
from oma_server.pagination import decode_token, encode_token, page_size_of
from oma_server.uninterruptible import finish

OK = "OK"
UNFINISHED = "UNFINISHED"
DEFAULT_RETENTION = timedelta(days=365)
PRUNE_INTERVAL_S = 24 * 3600.0
# Request fields that name the resource a call acts on, in the order they are looked for.
RESOURCE_FIELDS = ("id", "vm_context_id", "job_id", "appliance_id", "name", "source_network")


@dataclass(frozen=True)
class Caller:
    """Who made a call: the actor as shown to admins, the token id (empty when there was none), the peer."""

    actor: str
    token_id: str
    peer: str


@dataclass(frozen=True)
class AuditFilter:
    """Which entries to list; empty fields match everything."""

    token_id: str = ""
    method: str = ""  # a full method name, or its last part ("StartFailover")
    resource: str = ""


class AuditLog:
    def __init__(self, db: Database, retention: timedelta = DEFAULT_RETENTION) -> None:
        self.db = db
        self.retention = retention
        self._pruner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.prune()
        self._pruner = asyncio.create_task(self._prune_daily(), name="audit-pruner")

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None

    async def _prune_daily(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_S)
            try:
                await self.prune()
            except Exception:
                logger.opt(exception=True).error("pruning the audit log failed; trying again tomorrow")

    async def begin(self, caller: Caller, method: str, resource: str) -> int:
        """The entry of a call about to run; its id, for `end`. Written even if the caller is cancelled meanwhile."""
        row = await finish(
            self.db.tx(
                lambda: AuditEntry.create(
                    actor=caller.actor[:128],
                    token_id=caller.token_id[:16],
                    method=method[:128],
                    resource=resource[:255],
                    peer=caller.peer[:128],
                )
            )
        )
        return int(row.id)

    async def end(self, entry_id: int, outcome: str, reason: str = "") -> None:
        """The call's outcome; recorded even when the call was cancelled (its client went away)."""
        query = AuditEntry.update(outcome=outcome[:32], reason=reason[:64], finished_at=utcnow()).where(
            AuditEntry.id == entry_id
        )
        await finish(self.db.tx(query.execute))

    async def refused(self, caller: Caller, method: str, resource: str, outcome: str, reason: str) -> None:
        """A call the access check refused: one finished entry."""
        entry_id = await self.begin(caller, method, resource)
        await self.end(entry_id, outcome, reason)

    async def list(self, page_size: int, page_token: str, where: AuditFilter) -> tuple[list[AuditEntry], str]:
        """Newest first. The page token holds the id to continue below, so entries written while an admin pages
        through the log neither repeat nor shift what comes next."""
        size = page_size_of(page_size)
        below = decode_token(page_token)

        def page() -> list[AuditEntry]:
            query = AuditEntry.select().order_by(AuditEntry.id.desc())
            if below:
                query = query.where(AuditEntry.id < below)
            if where.token_id:
                query = query.where(AuditEntry.token_id == where.token_id)
            if where.method:
                wanted = where.method
                query = query.where(
                    (AuditEntry.method == wanted) | AuditEntry.method.endswith(f"/{wanted.rsplit('/', 1)[-1]}")
                )
            if where.resource:
                query = query.where(AuditEntry.resource == where.resource)
            return list(query.limit(size + 1))

        rows = await self.db.run(page)
        token = encode_token(int(rows[size - 1].id)) if len(rows) > size else ""
        return rows[:size], token

    async def prune(self, now: datetime | None = None) -> int:
        """Remove entries older than the retention; how many went."""
        cutoff = (now or utcnow()) - self.retention
        removed = int(await self.db.tx(AuditEntry.delete().where(AuditEntry.at < cutoff).execute))
        if removed:
            logger.info("audit log: pruned {n} entries older than {days} days", n=removed, days=self.retention.days)
        return removed
