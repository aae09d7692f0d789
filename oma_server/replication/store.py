"""The live replication job store: the one owner of every replication job's state in this process.

- Holds open jobs in memory; every change of a job is a **unit of work**: the new state is computed from the live one
  (status changes by `state_machine.transition` only), written with a new watch revision in one transaction, and
  only then made live, its cursor advanced and published to watchers. A unit that started finishes whatever happens
  to the task that asked for it (`uninterruptible.finish`): memory follows the database, never leads or lags it.
- Progress reports are applied in memory at once and written in batches every `flush_interval_s` (DESIGN §4); only
  then are they acked (`ack_through`: the session hub), so an ack always means "durably stored".
- Changes of one job are serialized by the job's lock (a progress report never lands between a unit's read of the
  live state and its commit); writes of all jobs by one write lock, so a batched flush and a unit never reorder.

- Several OMA processes on one PostgreSQL: every write is fenced on the row's version (repository.write_batch), so
  a copy of a job older than the database is never written over it — the unit runs again on the stored state
  (`JobChangedElsewhere`), a flush drops that job's unacked progress. The live copy of a job is the one of the
  process holding its appliance's stream (`is_local`); others read it from the database, and take the changes
  other processes announce (`take_foreign`, `take_progress`: cluster/changes.py).

Applying what appliances send is `applier.VmaMessageApplier`'s work, on top of these units; what an appliance's
coming and going does to its jobs is `liveness.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.models import new_id
from oma_server.db.runner import Runner
from oma_server.errors import InvalidArgument, NotFound, Unavailable
from oma_server.replication.repository import JobChangedElsewhere, JobRepository, SqlJobRepository
from oma_server.replication.state_machine import (
    DEFAULT_OPERATION,
    DiskState,
    JobState,
    JobStatus,
    carry_progress,
    transition,
)
from oma_server.revisions import commit_at_next_revision
from oma_server.uninterruptible import finish
from oma_server.watch import Change, WatchHub

FLUSH_SLICES = 10
#: how often a unit is computed again when another OMA process wrote the job meanwhile
STALE_RETRIES = 5


def flush_slice(job_id: str) -> int:
    return zlib.crc32(job_id.encode()) % FLUSH_SLICES


AckSink = Callable[[str, str, int], None]  # (appliance_id, job_id, durable sequence)
InTxHook = Callable[[JobState], None]  # runs inside the transaction of a unit (after the job's row is written)
Make = Callable[[JobState], JobState]  # the live state → the new state (a copy); may raise to change nothing


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobState]
    next_page_token: str


class ReplicationJobStore:
    def __init__(
        self,
        db: Runner,
        clock: Clock,
        watch: WatchHub,
        *,
        repository: JobRepository | None = None,
        final_hooks: Sequence[InTxHook] = (),
        flush_interval_s: float = 1.0,
    ) -> None:
        self.db = db
        self.repo: JobRepository = repository or SqlJobRepository()
        self.clock = clock
        self.watch = watch
        self.flush_interval_s = flush_interval_s
        self._ack_sink: AckSink | None = None
        # Run inside the transaction that makes a job final (the VM context follows its job).
        self.final_hooks = tuple(final_hooks)
        self._jobs: dict[str, JobState] = {}
        self._durable_seq: dict[str, int] = {}
        self._dirty: set[str] = set()
        #: jobs whose progress a flush is writing right now (no longer dirty, not yet written)
        self._flushing: set[str] = set()
        self._job_locks: dict[str, asyncio.Lock] = {}
        self._write_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0
        #: several OMA processes: whether this one holds the appliance's stream, so its copy of the appliance's jobs
        #: is the live one (None: one process, every copy is)
        self.is_local: Callable[[str], bool] | None = None
        #: several OMA processes: runs inside every transaction that writes jobs, with their ids (cluster/changes.py)
        self.announce: Callable[[list[JobState], bool], None] | None = None
        #: jobs whose copy here was last written by another OMA process (read, not written, by this one)
        self._foreign: set[str] = set()
        #: several OMA processes: told of every progress applied in memory here (cluster/changes.py relays it)
        self.on_touch: Callable[[JobState], None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        jobs = await self.db.run(self.repo.load_open)
        for job in jobs:
            self._remember(job)
        self._flusher = asyncio.create_task(self._flush_loop(), name="progress-flusher")
        logger.info("replication job store ready: {n} open jobs", n=len(jobs))

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()

    def _remember(self, job: JobState, *, foreign: bool = False) -> None:
        self._jobs[job.id] = job
        self._durable_seq[job.id] = job.last_sequence
        (self._foreign.add if foreign else self._foreign.discard)(job.id)

    def _remember_stored(self, stored: JobState) -> None:
        """A job as read from the database: foreign unless it is the version this process last wrote."""
        self._remember(
            stored,
            foreign=(cached := self._jobs.get(stored.id)) is None or cached.write_version != stored.write_version,
        )

    def changed_elsewhere(self, job_id: str) -> bool:
        """Whether another OMA process made the change of the job this process last saw."""
        return job_id in self._foreign

    # ---- reads ----------------------------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobState:
        job = await self.lookup(job_id)
        if job is None:
            raise NotFound(
                f"replication job {job_id} does not exist; list jobs with ListReplicationJobs",
                reason="JOB_NOT_FOUND",
                job_id=job_id,
            )
        return job.copy()

    async def lookup(self, job_id: str) -> JobState | None:
        """The live state of a job (loaded from the database once if this process has not held it yet)."""
        if not job_id:
            raise InvalidArgument("job id is required", reason="JOB_ID_MISSING")
        job = self._jobs.get(job_id)
        if job is not None and self._elsewhere(job):
            job = None  # another OMA process may have changed it: read what is stored
        if job is None:
            job = await self.db.run(self.repo.load, job_id)
            cached = self._jobs.get(job_id)
            if job is not None and (cached is None or (self._elsewhere(cached) and not self.job_lock(job_id).locked())):
                self._remember_stored(job)
            job = self._jobs.get(job_id, job)
        return job

    def _elsewhere(self, job: JobState) -> bool:
        """Whether this process's copy of an open job may be behind the database (another process holds its
        appliance's stream, or may have changed it)."""
        return (
            self.is_local is not None
            and not job.final
            and not self._unwritten(job.id)
            and not self.is_local(job.appliance_id)
        )

    def _unwritten(self, job_id: str) -> bool:
        """Whether this process holds progress of the job the database does not have yet (dirty, or being written
        by a flush): its copy is newer than the row, and a read of the row must not replace it."""
        return job_id in self._dirty or job_id in self._flushing

    def cached(self, job_id: str) -> JobState | None:
        return self._jobs.get(job_id)

    async def list_jobs(
        self,
        page_size: int,
        page_token: str,
        *,
        vm_context_id: str = "",
        appliance_id: str = "",
        statuses: Iterable[str] = (),
    ) -> JobPage:
        ids, token = await self.db.run(
            self.repo.page, page_size, page_token, vm_context_id, appliance_id, list(statuses)
        )
        # Open jobs come from memory (their latest progress may not be written yet), the rest from the database.
        return JobPage([await self.get(job_id) for job_id in ids], token)

    def open_jobs(self, appliance_id: str | None = None) -> list[JobState]:
        return [
            j.copy()
            for j in self._jobs.values()
            if not j.final and (appliance_id is None or j.appliance_id == appliance_id)
        ]

    def durable_cursors(self, appliance_id: str) -> list[tuple[str, int]]:
        """(job id, last durably applied sequence) of every open job of an appliance — the Welcome cursors."""
        return [
            (j.id, self._durable_seq.get(j.id, 0))
            for j in self._jobs.values()
            if j.appliance_id == appliance_id and not j.final
        ]

    def ack_through(self, sink: AckSink) -> None:
        """Who tells appliances that their progress is durable (the session hub)."""
        self._ack_sink = sink

    def durable_sequence(self, job_id: str) -> int:
        return self._durable_seq.get(job_id, 0)

    # ---- units of work --------------------------------------------------------------------------------------
    def job_lock(self, job_id: str) -> asyncio.Lock:
        """Held while a job is changed: by every unit, and by the applier around a report's checks and its apply."""
        return self._job_locks.setdefault(job_id, asyncio.Lock())

    async def create(
        self,
        *,
        vm_context_id: str,
        appliance_id: str,
        kind: str,
        disks: list[DiskState],
        request_id: str | None = None,
        retry_of: str = "",
        in_tx: InTxHook | None = None,
    ) -> JobState:
        """A new pending job with its disks; `in_tx` runs in the same transaction (the workflow's own bookkeeping)."""
        now = self.clock.now()
        fresh = JobState(
            id=new_id(),
            vm_context_id=vm_context_id,
            appliance_id=appliance_id,
            kind=kind,
            status=JobStatus.PENDING,
            current_operation=DEFAULT_OPERATION[JobStatus.PENDING],
            retry_of=retry_of,
            created_at=now,
            updated_at=now,
        )

        def insert(revision: int) -> JobState:
            fresh.revision = revision
            state = self.repo.insert(fresh, request_id, disks)
            if in_tx is not None:
                in_tx(state)
            return state

        async with self.job_lock(fresh.id):
            state = await finish(self._write(insert))
        return state.copy()

    async def transition(
        self,
        job_id: str,
        dst: JobStatus,
        *,
        operation: str | None = None,
        error_reason: str = "",
        error_message: str = "",
        error_class: str = "",
        mutate: Callable[[JobState], None] | None = None,
        in_tx: InTxHook | None = None,
    ) -> JobState:
        """Move a job to `dst` durably (FailedPrecondition when illegal); `mutate` edits the new state first."""

        def make(before: JobState) -> JobState:
            after = transition(
                before,
                dst,
                self.clock.now(),
                operation=operation,
                error_reason=error_reason,
                error_message=error_message,
                error_class=error_class,
            )
            if mutate is not None:
                mutate(after)
            return after

        return await self.change(job_id, make, in_tx)

    async def update(self, job_id: str, mutate: Callable[[JobState], None], operation: str | None = None) -> JobState:
        """Change fields other than status (the workflow's disk targets, operation text) durably."""

        def make(before: JobState) -> JobState:
            after = before.copy()
            mutate(after)
            if operation is not None:
                after.current_operation = operation
            after.updated_at = self.clock.now()
            return after

        return await self.change(job_id, make)

    async def change(self, job_id: str, make: Make, in_tx: InTxHook | None = None) -> JobState:
        """One unit of work on a job (see the module docstring); returns the new state."""
        if await self.lookup(job_id) is None:
            await self.get(job_id)  # raises NotFound
        async with self.job_lock(job_id):
            return (await self.change_locked(job_id, make, in_tx)).copy()

    async def change_locked(self, job_id: str, make: Make, in_tx: InTxHook | None = None) -> JobState:
        """`change` for a caller that holds the job's lock already. When the job's row was written elsewhere since
        this process loaded it (another OMA process: a cancel there, a stream that moved), the unit is computed
        again from the row as it is now — `make` is a function of the state it is given."""
        for _ in range(STALE_RETRIES):
            try:
                return await self._change_once(job_id, make, in_tx)
            except JobChangedElsewhere:
                logger.bind(job_id=job_id).info("job changed in another OMA process; applying to its stored state")
                await self.reload(job_id)
        raise Unavailable(
            f"job {job_id} keeps changing in other OMA processes; try again",
            reason="JOB_CONTENDED",
            job_id=job_id,
        )

    async def _change_once(self, job_id: str, make: Make, in_tx: InTxHook | None) -> JobState:
        before = self._jobs[job_id]
        after = make(before)  # raises before anything is reserved or written
        hooks = list(self.final_hooks) if after.final and not before.final else []

        def write(revision: int) -> JobState:
            after.revision = revision
            self.repo.write(after)
            if in_tx is not None:
                in_tx(after)
            for hook in hooks:
                hook(after)
            return after

        return await finish(self._write(write))

    async def reload(self, job_id: str) -> None:
        """Replace this process's copy of a job by its stored state (its unwritten progress, if any, is dropped:
        unacked, so the appliance sends it again)."""
        if (stored := await self.db.run(self.repo.load, job_id)) is not None:
            self._dirty.discard(job_id)
            self._remember_stored(stored)

    async def refresh_open(self) -> None:
        """Every open job as stored becomes this process's copy, unless its stream is here or it has unwritten
        progress (several OMA processes: jobs started or changed elsewhere)."""
        for job_id, version in (await self.db.run(self.repo.open_versions)).items():
            cached = self._jobs.get(job_id)
            behind = cached is None or (self._elsewhere(cached) and cached.write_version != version)
            if behind and (stored := await self.db.run(self.repo.load, job_id)) is not None:
                self._remember_stored(stored)

    async def adopt(self, appliance_id: str) -> None:
        """This process now holds the appliance's stream: its open jobs as stored (the previous holder wrote what
        it had before it let go)."""
        for job in await self.db.run(self.repo.load_open_of, appliance_id):
            if not self._unwritten(job.id):
                self._remember_stored(job)

    async def _write(self, write: Callable[[int], JobState]) -> JobState:
        """Reserve a revision, run `write` in one transaction, then make its state live and publish it.

        Runs whole (callers wrap it in `finish`); a failed transaction abandons its revision so watchers of later
        changes do not wait for it."""
        announce = self.announce

        def write_and_announce(revision: int) -> JobState:
            state = write(revision)
            if announce is not None:
                announce([state], False)
            return state

        async with self._write_lock:
            state = await commit_at_next_revision(self.db, self.watch, write_and_announce)
            self._remember(state)
            self._dirty.discard(state.id)
            self.publish(state)
        return state

    async def take_foreign(self, job_id: str) -> None:
        """Another OMA process wrote the job: its stored state becomes this process's copy and is published to this
        process's watchers, under a revision of this process (skipped while this process has unwritten progress of
        the job — its flush's fence decides — or already holds that write)."""
        async with self.job_lock(job_id):
            if self._unwritten(job_id):
                return
            stored = await self.db.run(self.repo.load, job_id)
            cached = self._jobs.get(job_id)
            if stored is None or (cached is not None and cached.write_version >= stored.write_version):
                return
            if cached is not None and cached.last_sequence > stored.last_sequence and not stored.final:
                carry_progress(cached, stored)  # relayed progress newer than this write: watchers never go back
            async with self._write_lock:
                stored.revision = self.watch.next_revision()
                self._remember(stored, foreign=True)
                self.publish(stored)

    def touch_in_memory(self, job: JobState) -> None:
        """A live job changed in memory only (a progress report): give it a revision, publish it, write it at the
        next flush. The caller holds the job's lock."""
        job.revision = self.watch.next_revision()
        self._dirty.add(job.id)
        self.publish(job)
        if self.on_touch is not None:
            self.on_touch(job)

    def has_progress_through(self, job_id: str, sequence: int) -> bool:
        """Whether this process's copy of an open job has every report up to `sequence` (relayed, or its own)."""
        cached = self._jobs.get(job_id)
        return cached is not None and not cached.final and cached.last_sequence >= sequence

    def take_progress(self, relayed: JobState) -> bool:
        """Progress another OMA process applied in memory (cluster/changes.py): onto this process's copy of the job,
        published to its watchers, when newer and the copy is not live here. True when taken."""
        cached = self._jobs.get(relayed.id)
        if cached is None or cached.final or not self._elsewhere(cached):
            return False
        if relayed.last_sequence <= cached.last_sequence:
            return False
        taken = cached.copy()
        carry_progress(relayed, taken)
        taken.revision = self.watch.next_revision()
        self._remember(taken, foreign=True)
        self.publish(taken)
        return True

    def publish(self, state: JobState) -> None:
        self.watch.publish(
            Change(
                revision=state.revision,
                job_kind="replication",
                job_id=state.id,
                vm_context_id=state.vm_context_id,
                state=state.copy(),
                final=state.final,
            )
        )

    # ---- batched progress writes -------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        # Jobs are spread over FLUSH_SLICES slices, one slice written per tick: each job is still written every
        # flush interval, but the writes and their acks no longer all land in the same instant (a 1,000-job burst
        # was the p99 watch latency in bench.progress).
        tick = 0
        while True:
            await asyncio.sleep(self.flush_interval_s / FLUSH_SLICES)
            try:
                await self.flush(slice_=tick % FLUSH_SLICES)
            except Exception:
                logger.opt(exception=True).error("progress flush failed; retrying at the next interval")
            tick += 1

    async def flush(self, slice_: int | None = None) -> int:
        """Write jobs with unwritten progress (all, or one slice) in one transaction, then ack what was written."""
        if not self._dirty:
            return 0
        return await finish(self._flush(slice_))

    def _write_batch(self, batch: list[JobState]) -> list[str]:
        stale = self.repo.write_batch(batch)
        if self.announce is not None:
            self.announce([s for s in batch if s.id not in stale], True)
        return stale

    async def _flush(self, slice_: int | None) -> int:
        async with self._write_lock:
            chosen = [j for j in self._dirty if slice_ is None or flush_slice(j) == slice_]
            batch = [self._jobs[j].copy() for j in chosen if j in self._jobs]
            self._dirty.difference_update(chosen)
            self._flushing.update(s.id for s in batch)
            try:
                stale = await self.db.tx(self._write_batch, batch)
            except BaseException:
                self._dirty.update(s.id for s in batch)
                raise
            finally:
                self._flushing.difference_update(s.id for s in batch)
            self.flushes += 1
            written = [s for s in batch if s.id not in stale]
            for state in written:
                live = self._jobs.get(state.id)
                if live is not None:
                    live.write_version = state.write_version
        for job_id in stale:
            # Written by another OMA process meanwhile: its stored state wins, this progress is not acked.
            logger.bind(job_id=job_id).info("job changed in another OMA process; its unwritten progress is dropped")
            async with self.job_lock(job_id):
                await self.reload(job_id)
        for state in written:
            self._durable_seq[state.id] = max(self._durable_seq.get(state.id, 0), state.last_sequence)
            if self._ack_sink is not None:
                self._ack_sink(state.appliance_id, state.id, self._durable_seq[state.id])
        return len(written)
