"""Appliances' last-seen times are written in batches: a burst of heartbeats is one transaction, not one each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from oma_server.clock import SystemClock
from oma_server.db.database import Database
from oma_server.db.models import Appliance
from oma_server.stream.last_seen import LastSeen

T = TypeVar("T")


class CountingRunner:
    """The real database, counting its transactions."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.transactions = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.db.run(fn, *args)

    async def tx(self, fn: Callable[..., T], *args: Any) -> T:
        self.transactions += 1
        return await self.db.tx(fn, *args)


async def test_a_burst_of_heartbeats_is_written_in_one_transaction(db: Database) -> None:
    ids = await db.tx(lambda: [Appliance.create(name=f"vma-{n}", credential_hash="x").id for n in range(1200)])
    runner = CountingRunner(db)
    seen = LastSeen(runner, SystemClock(), batch_s=0.05)  # type: ignore[arg-type]
    for appliance_id in ids:
        seen.mark(appliance_id)
    assert runner.transactions == 0  # nothing written per heartbeat
    await seen.stop()  # a stop writes what is marked (here: before the batch interval passed)
    assert runner.transactions == 1
    stamped = await db.run(lambda: Appliance.select().where(Appliance.last_seen_at.is_null(False)).count())
    assert stamped == len(ids)
