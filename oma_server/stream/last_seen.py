"""When each appliance was last heard from (`appliance.last_seen_at`), written in batches.

A heartbeat marks its appliance seen; the marks of one `batch_s` are written in one UPDATE. Written one transaction
per heartbeat, the first heartbeats of a fleet that connected together (1,000 appliances ten seconds after a
restart) were a thousand transactions in the same instant — the watchers' p99 in `bench.progress`, and on
PostgreSQL 11 % of a process's samples in py-spy (BEGIN and COMMIT round trips). The column is informational
(liveness runs on the live sessions): a crash loses at most one batch.
"""

from __future__ import annotations

import asyncio
import contextlib

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.models import Appliance
from oma_server.db.runner import Runner

BATCH_S = 1.0
CHUNK = 500  # ids per UPDATE ... WHERE id IN (...)


class LastSeen:
    def __init__(self, db: Runner, clock: Clock, batch_s: float = BATCH_S) -> None:
        self.db = db
        self.clock = clock
        self.batch_s = batch_s
        self._marked: set[str] = set()
        self._writer: asyncio.Task[None] | None = None

    def mark(self, appliance_id: str) -> None:
        self._marked.add(appliance_id)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_soon(), name="appliances-last-seen")

    async def _write_soon(self) -> None:
        await asyncio.sleep(self.batch_s)
        await self.write()

    async def write(self) -> None:
        """Write every mark made so far (one UPDATE per CHUNK appliances, one transaction)."""
        ids, self._marked = sorted(self._marked), set()
        if not ids:
            return
        seen_at = self.clock.now()

        def update() -> None:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                Appliance.update(last_seen_at=seen_at).where(Appliance.id.in_(chunk)).execute()

        try:
            await self.db.tx(update)
        except Exception as exc:  # informational: the next heartbeats mark them again
            logger.warning("last-seen times of {n} appliance(s) not written: {e}", n=len(ids), e=exc)

    async def stop(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.write()
