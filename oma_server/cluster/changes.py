"""Job changes made by one OMA process, seen by the others: every transaction that writes replication jobs
notifies `oma_job_changed` with their ids (delivered at its commit, in commit order); each other process reads those
jobs as stored and publishes them to its own watchers (store.take_foreign) — so its workflow reacts to an end or a
disk completed that a stream held elsewhere applied, and its WatchJob streams follow every job.

Progress is applied in memory and written a second later (DESIGN §4); so that watchers on other processes see it
as soon as the stream's own do, the holder also relays what it applied every `RELAY_S` on `oma_job_progress` — the
progress fields of each job touched (`<process id>|<JSON>`), taken only when newer than the receiver's copy
(store.take_progress). Like the holder's own watchers, they see progress before it is durable; the durable write's
announcement follows, and a relayed value is never replaced by an older one.

Failover jobs live in their rows only; each commit announces the job's id (`f`), and the others publish the row as
stored (failover/store.take_foreign).

Payload: `<process id>|<u: a unit, p: a progress flush>|[[job id, last sequence]…]` or `<process id>|f|<job id>`,
split to stay under PostgreSQL's 8,000-byte limit. A process skips its own. A lost notification (the listener
reconnecting) is caught up at the next change of the job, and the progress flush rewrites a running job every
second; `on_reconnect` re-reads every open job at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from loguru import logger

from oma_server.cluster.bus import ClusterBus, notify
from oma_server.db.runner import Runner
from oma_server.failover.store import FailoverJobStore
from oma_server.replication.state_machine import (
    DISK_PROGRESS_FIELDS,
    PROGRESS_FIELDS,
    DiskState,
    JobState,
    JobStatus,
)
from oma_server.replication.store import ReplicationJobStore

CHANNEL = "oma_job_changed"
PROGRESS_CHANNEL = "oma_job_progress"
MAX_PAYLOAD = 7_900
RELAY_S = 0.05
#: a progress flush's jobs are read only when their relay has not come this long after the flush's notification
RELAY_GRACE_S = 1.0


class ChangeFeed:
    def __init__(
        self, db: Runner, bus: ClusterBus, jobs: ReplicationJobStore, failovers: FailoverJobStore, process_id: str
    ) -> None:
        self.db = db
        self.bus = bus
        self.jobs = jobs
        self.failovers = failovers
        self.process_id = process_id
        self._tasks: set[asyncio.Task[None]] = set()
        self._touched: dict[str, JobState] = {}
        self._relay: asyncio.TimerHandle | None = None
        if not bus.enabled:
            return
        jobs.announce = self.announce
        failovers.announce = lambda job_id: notify(CHANNEL, f"{process_id}|f|{job_id}")
        jobs.on_touch = self._touched_here
        bus.listen(CHANNEL, self._received)
        bus.listen(PROGRESS_CHANNEL, self._progress_received)
        bus.on_reconnect.append(lambda: self._spawn(self._catch_up()))

    def announce(self, states: list[JobState], progress_only: bool) -> None:
        """Inside the writing transaction: tell the other processes which jobs it writes, up to which sequence, and
        whether it is a progress flush (a receiver whose relayed copy has those sequences skips reading it)."""
        items = [[state.id, state.last_sequence] for state in states]
        for payload in _chunks(f"{self.process_id}|{'p' if progress_only else 'u'}|", items):
            notify(CHANNEL, payload)

    def _received(self, payload: str) -> None:
        origin, kind, body = payload.split("|", 2)
        if origin == self.process_id:
            return
        if kind == "f":
            self._spawn(self._take_failover(body))
            return
        items = json.loads(body)
        if kind == "p":  # a progress flush: what the relay brought, or brings soon, needs no read
            self._spawn(self._take_unrelayed([(job_id, seq) for job_id, seq in items]))
        elif items:
            self._spawn(self._take([job_id for job_id, _ in items]))

    async def _take_unrelayed(self, items: list[tuple[str, int]]) -> None:
        """The jobs of a progress flush whose relay has not brought that far, read after RELAY_GRACE_S: under load
        the relay can arrive after the flush's notification, and reading every such job at once (two queries each)
        was what fell behind (py-spy of the watchers' process at 1,000 reports/s from each of two processes)."""
        await asyncio.sleep(RELAY_GRACE_S)
        await self._take([job_id for job_id, seq in items if not self.jobs.has_progress_through(job_id, seq)])

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

    async def _take_failover(self, job_id: str) -> None:
        try:
            await self.failovers.take_foreign(job_id)
        except Exception:
            logger.bind(job_id=job_id).opt(exception=True).warning("a failover change from another process not read")

    # ---- progress ----------------------------------------------------------------------------------------------
    def _touched_here(self, job: JobState) -> None:
        self._touched[job.id] = job
        if self._relay is None:
            self._relay = asyncio.get_running_loop().call_later(RELAY_S, self._relay_now)

    def _relay_now(self) -> None:
        self._relay = None
        touched, self._touched = self._touched, {}
        payloads = _chunks(f"{self.process_id}|", [_progress_of(job) for job in touched.values()])
        self._spawn(self._send(payloads))

    async def _send(self, payloads: list[str]) -> None:
        def send() -> None:
            for payload in payloads:
                notify(PROGRESS_CHANNEL, payload)

        try:
            await self.db.tx(send)
        except Exception as exc:  # a lost relay costs the other processes' watchers a second (the flush follows)
            logger.warning("progress not relayed to the other OMA processes: {e}", e=exc)

    def _progress_received(self, payload: str) -> None:
        origin, _, body = payload.partition("|")
        if origin == self.process_id or not body:
            return
        for item in json.loads(body):
            self.jobs.take_progress(_state_of(item))

    async def _catch_up(self) -> None:
        await self._take([job.id for job in self.jobs.open_jobs()])
        for failover in await self.failovers.open_jobs(include_scheduled=True):
            await self._take_failover(failover.id)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


def _chunks(prefix: str, items: list[list[Any]]) -> list[str]:
    """JSON arrays of `items`, each payload under MAX_PAYLOAD."""
    payloads: list[str] = []
    chunk: list[str] = []
    size = len(prefix) + 2
    for item in items:
        encoded = json.dumps(item, separators=(",", ":"))
        if chunk and size + len(encoded) + 1 > MAX_PAYLOAD:
            payloads.append(prefix + "[" + ",".join(chunk) + "]")
            chunk, size = [], len(prefix) + 2
        chunk.append(encoded)
        size += len(encoded) + 1
    if chunk:
        payloads.append(prefix + "[" + ",".join(chunk) + "]")
    return payloads


def _progress_of(job: JobState) -> list[Any]:
    """[job id, the progress fields..., [[disk id, its progress fields...]...]] (state_machine.PROGRESS_FIELDS)."""
    fields: list[Any] = [getattr(job, name) for name in PROGRESS_FIELDS]
    fields[PROGRESS_FIELDS.index("current_operation")] = job.current_operation[:200]
    fields[PROGRESS_FIELDS.index("updated_at")] = job.updated_at.isoformat() if job.updated_at else None
    disks = [[d.disk_id, *(getattr(d, name) for name in DISK_PROGRESS_FIELDS)] for d in job.disks]
    return [job.id, *fields, disks]


def _state_of(item: list[Any]) -> JobState:
    """A JobState carrying only what `_progress_of` relayed (the rest is the receiver's copy's)."""
    job_id, *fields, disks = item
    values = dict(zip(PROGRESS_FIELDS, fields, strict=True))
    if values["updated_at"]:
        values["updated_at"] = datetime.fromisoformat(values["updated_at"])
    # Only the progress fields are taken from it (store.take_progress): the status is the receiver's copy's.
    state = JobState(id=job_id, vm_context_id="", appliance_id="", kind="", status=JobStatus.REPLICATING, **values)
    state.disks = [
        DiskState(disk_id=d[0], disk_key=0, **dict(zip(DISK_PROGRESS_FIELDS, d[1:], strict=True))) for d in disks
    ]
    return state
