"""What one OMA process asks of the others, through LISTEN/NOTIFY, each with its polling fallback:

- **let go of a stream** (`oma_stream_release`, payload the appliance id): a hello reached this process while
  another holds the appliance's lock; the holder ends its stream, writes what it applied and unlocks (the asking
  process polls the lock meanwhile, so a lost word costs the hello its wait and a retry);
- **deliver a command** (`oma_outbox`, the appliance id): a command was queued here for an appliance whose stream
  another process holds; the holder sends what is pending (and every `poll_s` whatever is pending for its streams);
- **an answer is stored** (`oma_command_answered`, the command id, sent in the answer's transaction): waiters in
  other processes read it at once (and every few seconds whatever happens: outbox.CommandOutbox._answer).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from loguru import logger

from oma_server.cluster.bus import ClusterBus, notify
from oma_server.db.database import Database
from oma_server.db.models import Command as CommandRow
from oma_server.outbox import CommandOutbox


class StreamHolder(Protocol):
    """What routing needs of the session hub (stream/hub.py)."""

    async def release_here(self, appliance_id: str) -> None: ...
    def connected(self, appliance_id: str) -> bool: ...
    def session_ids(self) -> dict[str, str]: ...


RELEASE_CHANNEL = "oma_stream_release"
OUTBOX_CHANNEL = "oma_outbox"
ANSWERED_CHANNEL = "oma_command_answered"


class ClusterRouting:
    def __init__(self, db: Database, bus: ClusterBus, hub: StreamHolder, outbox: CommandOutbox, poll_s: float) -> None:
        self.db = db
        self.bus = bus
        self.hub = hub
        self.outbox = outbox
        self.poll_s = poll_s
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        if not bus.enabled:
            return
        bus.listen(RELEASE_CHANNEL, lambda appliance_id: self._spawn(hub.release_here(appliance_id)))
        bus.listen(OUTBOX_CHANNEL, self._deliver_here)
        bus.listen(ANSWERED_CHANNEL, lambda command_id: self._spawn(outbox.answered_elsewhere(command_id)))
        bus.on_reconnect.append(lambda: self._spawn(self.deliver_pending()))
        outbox.wake_holder = self.wake_holder
        outbox.announce_answer = lambda command_id: notify(ANSWERED_CHANNEL, command_id)
        outbox.recheck_s = poll_s

    async def start(self) -> None:
        if self.bus.enabled and self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="cluster-outbox-poll")

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._poller] if self._poller else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._poller = None

    def _spawn(self, work: object) -> None:
        task = asyncio.ensure_future(work)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ask_release(self, appliance_id: str) -> None:
        await self.db.tx(notify, RELEASE_CHANNEL, appliance_id)

    async def wake_holder(self, appliance_id: str) -> None:
        await self.db.tx(notify, OUTBOX_CHANNEL, appliance_id)

    def _deliver_here(self, appliance_id: str) -> None:
        if self.hub.connected(appliance_id):
            self._spawn(self.outbox.kick(appliance_id))

    async def deliver_pending(self) -> int:
        """Send every command still pending for an appliance whose stream this process holds; how many appliances."""
        here = set(self.hub.session_ids())
        if not here:
            return 0

        def pending() -> list[str]:
            query = CommandRow.select(CommandRow.appliance).where(CommandRow.status == "pending").distinct()
            return [r.appliance_id for r in query]

        waiting = [a for a in await self.db.run(pending) if a in here]
        for appliance_id in waiting:
            await self.outbox.kick(appliance_id)
        return len(waiting)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.deliver_pending()
            except Exception:
                logger.opt(exception=True).warning("polling the outbox failed; trying again")
