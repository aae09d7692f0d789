"""Job changes made by one OMA process, seen by the others: every transaction that writes replication jobs
notifies `oma_job_changed` with their ids (delivered at its commit, in commit order); each other process reads those
jobs as stored and publishes them to its own watchers (store.take_foreign) — so its workflow reacts to an end or a
disk completed that a stream held elsewhere applied, and its WatchJob streams follow every job.

Payload: `<process id>|<job id>,<job id>…`, split to stay under PostgreSQL's 8,000-byte limit. A process skips its
own. A lost notification (the listener reconnecting) is caught up at the next change of the job, and the progress
flush rewrites a running job every second; `on_reconnect` re-reads every open job at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from loguru import logger

from oma_server.cluster.bus import ClusterBus, notify
from oma_server.replication.store import ReplicationJobStore

CHANNEL = "oma_job_changed"
MAX_PAYLOAD = 7_900


class ChangeFeed:
    def __init__(self, bus: ClusterBus, jobs: ReplicationJobStore, process_id: str) -> None:
        self.bus = bus
        self.jobs = jobs
        self.process_id = process_id
        self._tasks: set[asyncio.Task[None]] = set()
        if not bus.enabled:
            return
        jobs.announce = self.announce
        bus.listen(CHANNEL, self._received)
        bus.on_reconnect.append(lambda: self._spawn(self._catch_up()))

    def announce(self, job_ids: list[str]) -> None:
        """Inside the writing transaction: tell the other processes which jobs it writes."""
        prefix = f"{self.process_id}|"
        chunk: list[str] = []
        size = len(prefix)
        for job_id in job_ids:
            if chunk and size + len(job_id) + 1 > MAX_PAYLOAD:
                notify(CHANNEL, prefix + ",".join(chunk))
                chunk, size = [], len(prefix)
            chunk.append(job_id)
            size += len(job_id) + 1
        if chunk:
            notify(CHANNEL, prefix + ",".join(chunk))

    def _received(self, payload: str) -> None:
        origin, _, ids = payload.partition("|")
        if origin != self.process_id and ids:
            self._spawn(self._take(ids.split(",")))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            try:
                await self.jobs.take_foreign(job_id)
            except Exception:
                logger.bind(job_id=job_id).opt(exception=True).warning("a change from another OMA process not read")

    async def _catch_up(self) -> None:
        await self._take([job.id for job in self.jobs.open_jobs()])

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
