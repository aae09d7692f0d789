"""Watch revisions that only grow, across restarts and crashes too.

Progress revisions are handed out and published from memory, and written with the batched progress a second
later; an OMA killed in between would, on restart, count on from the highest revision *stored* and hand a revision a
watcher has already seen to a different change — and a watcher resuming from it would miss that change. So
revisions come from a range reserved in the database first (the hi/lo way of sequence caches): at start the next
range begins above both the highest stored revision and the last reservation; when half of the range is used, the
next one is reserved in the background; a change above the reserved range waits in the watch hub until it is (it
never has to: a range of 100,000 lasts ~50 s at 2,000 reports/s and its extension commits in milliseconds).

Several OMA processes on one PostgreSQL reserve from the same record, each range above every earlier one of any
process (the row locked until the commit), so no two processes hand out the same revision: when a process's next
range does not follow its last (another process reserved in between), its hub skips the gap (`continue_at`). The
revisions of different processes are unique, not ordered with each other: a watcher resumes on the process it
watched, and a revision another process handed out is refused (REVISION_COMPACTED: list again, watch from 0), never
read as one of this process's (watch.WatchHub.since).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

from loguru import logger

from oma_server.db.database import Database
from oma_server.db.models import WatchRevision, for_update
from oma_server.db.runner import Runner
from oma_server.watch import WatchHub

RANGE = 100_000

T = TypeVar("T")


async def commit_at_next_revision(db: Runner, hub: WatchHub, write: Callable[[int], T]) -> T:
    """Reserve the next watch revision and run `write(revision)` in one transaction. A failed transaction abandons
    the revision, so watchers of later changes do not wait for it; after a commit the caller publishes the change."""
    revision = hub.next_revision()
    try:
        return await db.tx(write, revision)
    except BaseException:
        hub.abandon(revision)
        raise


def _reserve_range(size: int, above: int) -> tuple[int, int]:
    """The next range (lo, lo + size] for this process alone: above `above` and every earlier reservation of any
    process (the record's row is locked until the commit on PostgreSQL). Returns (lo, hi)."""
    row = for_update(WatchRevision.select().where(WatchRevision.id == 1)).first()
    lo = max(above, int(row.reserved_up_to) if row is not None else 0)
    if row is None:
        WatchRevision.create(id=1, reserved_up_to=lo + size)
    else:
        WatchRevision.update(reserved_up_to=lo + size).where(WatchRevision.id == 1).execute()
    return lo, lo + size


class RevisionReservations:
    def __init__(self, db: Database, hub: WatchHub, range_size: int = RANGE) -> None:
        self.db = db
        self.hub = hub
        self.range_size = range_size
        self._extending: asyncio.Task[None] | None = None

    async def start(self, highest_stored: int) -> None:
        """Continue above every revision ever handed out; reserve the first range before anything is served."""
        start, upper = await self.db.tx(_reserve_range, self.range_size, highest_stored)
        self.hub.reset(start)
        self.hub.raise_bound(upper, low_mark=upper - self.range_size // 2)
        self.hub.headroom_low = self._extend_soon
        logger.info("watch revisions continue above {start}", start=start)

    async def stop(self) -> None:
        if self._extending is not None:
            with contextlib.suppress(Exception):
                await self._extending

    async def _reserve(self) -> None:
        lower, upper = await self.db.tx(_reserve_range, self.range_size, 0)
        self.hub.continue_at(lower, upper, low_mark=upper - self.range_size // 2)

    def _extend_soon(self) -> None:
        if self._extending is None or self._extending.done():
            self._extending = asyncio.create_task(self._extend(), name="watch-revision-range")

    async def _extend(self) -> None:
        while True:
            try:
                await self._reserve()
                return
            except Exception:
                logger.opt(exception=True).error("could not reserve watch revisions; retrying in 1 s")
                await asyncio.sleep(1)
