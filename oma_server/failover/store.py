"""Failover jobs in the database: every change is one transaction with its steps, then published to watchers.

`commit` reads the row, applies a mutation (state_machine.py functions), gives it the next watch revision, writes it
and runs the caller's in-transaction hook (the VM context's transition, a job-log entry, a queued command) in the
same transaction; then it publishes the new state to the watch hub so WatchJob/WatchJobs show it. Changes of one job
are serialized in this process by a lock, and across OMA processes by the row's lock (FOR UPDATE on PostgreSQL:
a cancel asked of one process and a step committed by another both land); the database row is the only state, so
any OMA process can read it. With several processes every commit is announced to the others (`announce`, inside
the transaction: cluster/changes.py), which read the row and publish it to their own watchers (`take_foreign`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import FailoverJob, for_update, utcnow
from oma_server.errors import AlreadyExists, InvalidArgument, NotFound
from oma_server.failover.state_machine import (
    OPEN,
    RUNNABLE,
    FailoverJobState,
    FailoverKind,
    FailoverStatus,
    FailoverStep,
    new_steps,
)
from oma_server.pagination import fetch_page
from oma_server.revisions import commit_at_next_revision
from oma_server.uninterruptible import finish
from oma_server.watch import Change, WatchHub

InTx = Callable[[FailoverJobState], None]
Mutate = Callable[[FailoverJobState], None]


def row_to_state(row: FailoverJob) -> FailoverJobState:
    return FailoverJobState(
        id=row.id,
        vm_context_id=row.vm_context_id,
        kind=FailoverKind(row.kind),
        status=FailoverStatus(row.status),
        steps=[FailoverStep.from_json(s) for s in row.steps or []],
        current_step=row.current_step,
        target_vm_id=row.target_vm_id,
        target_vm_name=row.target_vm_name,
        snapshot_ids=dict(row.snapshot_ids or {}),
        params=dict(row.params or {}),
        error_reason=row.error_reason,
        error_message=row.error_message,
        revision=int(row.revision),
        request_id=row.request_id or "",
        claimed_by=row.claimed_by,
        created_at=row.created_at,
        finished_at=row.finished_at,
        updated_at=row.updated_at,
    )


def _fields(state: FailoverJobState) -> dict[str, object]:
    return {
        "status": state.status.value,
        "steps": [s.to_json() for s in state.steps],
        "current_step": state.current_step,
        "target_vm_id": state.target_vm_id,
        "target_vm_name": state.target_vm_name,
        "snapshot_ids": state.snapshot_ids,
        "params": state.params,
        "error_reason": state.error_reason,
        "error_message": state.error_message,
        "revision": state.revision,
        "claimed_by": state.claimed_by,
        "finished_at": state.finished_at,
        "updated_at": state.updated_at,
    }


def load(job_id: str) -> FailoverJobState | None:
    row = FailoverJob.get_or_none(FailoverJob.id == job_id)
    return None if row is None else row_to_state(row)


def latest_failover_of(vm_context_id: str) -> FailoverJobState | None:
    """The newest test or live failover of a VM (what a cleanup or rollback undoes)."""
    row = (
        FailoverJob.select()
        .where((FailoverJob.vm_context == vm_context_id) & FailoverJob.kind.in_(["test", "live"]))
        .order_by(FailoverJob.created_at.desc(), FailoverJob.id.desc())
        .first()
    )
    return None if row is None else row_to_state(row)


def open_failover_of(vm_context_id: str, excluding: str = "") -> FailoverJobState | None:
    """A job of the failover engine on this VM that has not ended (other than `excluding`, the caller's own); a
    scheduled cutover counts."""
    row = (
        FailoverJob.select()
        .where(
            (FailoverJob.vm_context == vm_context_id)
            & FailoverJob.status.in_([s.value for s in OPEN])
            & (FailoverJob.id != excluding)
        )
        .order_by(FailoverJob.created_at)
        .first()
    )
    return None if row is None else row_to_state(row)


def scheduled_of(vm_context_id: str) -> FailoverJobState | None:
    """The VM's scheduled cutover, if it has one."""
    row = FailoverJob.get_or_none(
        (FailoverJob.vm_context == vm_context_id) & (FailoverJob.status == FailoverStatus.SCHEDULED.value)
    )
    return None if row is None else row_to_state(row)


@dataclass(frozen=True)
class FailoverJobPage:
    jobs: list[FailoverJobState]
    next_page_token: str


class FailoverJobStore:
    def __init__(self, db: Database, clock: Clock, watch: WatchHub) -> None:
        self.db = db
        self.clock = clock
        self.watch = watch
        self._locks: dict[str, asyncio.Lock] = {}
        #: several OMA processes: called inside each commit's transaction with the job's id (cluster/changes.py)
        self.announce: Callable[[str], None] | None = None
        #: (stored revision, updated_at) of what this process last published of each job another process wrote
        self._taken: dict[str, tuple[int, object]] = {}

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    async def get(self, job_id: str) -> FailoverJobState:
        found = await self.lookup(job_id)
        if found is None:
            raise NotFound(
                f"failover job {job_id} does not exist; list jobs with ListFailoverJobs",
                reason="JOB_NOT_FOUND",
                job_id=job_id,
            )
        return found

    async def lookup(self, job_id: str) -> FailoverJobState | None:
        if not job_id:
            raise InvalidArgument("job id is required", reason="JOB_ID_MISSING")
        return await self.db.run(load, job_id)

    async def list_jobs(self, page_size: int, page_token: str, vm_context_id: str = "") -> FailoverJobPage:
        def query() -> FailoverJobPage:
            q = FailoverJob.select().order_by(FailoverJob.created_at.desc(), FailoverJob.id.desc())
            if vm_context_id:
                q = q.where(FailoverJob.vm_context == vm_context_id)
            rows, token = fetch_page(q, page_size, page_token)
            return FailoverJobPage([row_to_state(r) for r in rows], token)

        return await self.db.run(query)

    async def open_jobs(self, include_scheduled: bool = False) -> list[FailoverJobState]:
        """Jobs a runner works on (pending, running), oldest first; with `include_scheduled` also scheduled
        cutovers (what watchers are shown)."""
        statuses = OPEN if include_scheduled else RUNNABLE
        return await self._with_status([s.value for s in statuses])

    async def scheduled_jobs(self) -> list[FailoverJobState]:
        """Scheduled cutovers waiting for their start time, oldest first."""
        return await self._with_status([FailoverStatus.SCHEDULED.value])

    async def _with_status(self, statuses: list[str]) -> list[FailoverJobState]:
        def query() -> list[FailoverJobState]:
            rows = FailoverJob.select().where(FailoverJob.status.in_(statuses))
            return [row_to_state(r) for r in rows.order_by(FailoverJob.created_at)]

        return await self.db.run(query)

    async def create(
        self,
        vm_context_id: str,
        kind: FailoverKind,
        *,
        target_vm_name: str = "",
        params: dict[str, object] | None = None,
        request_id: str = "",
        in_tx: InTx | None = None,
        status: FailoverStatus = FailoverStatus.PENDING,
    ) -> FailoverJobState:
        now = utcnow()

        def insert(revision: int) -> FailoverJobState:
            if request_id and FailoverJob.get_or_none(FailoverJob.request_id == request_id) is not None:
                raise AlreadyExists(f"request_id {request_id!r} was already used", reason="REQUEST_ID_REUSED")
            row = FailoverJob.create(
                vm_context=vm_context_id,
                kind=kind.value,
                status=status.value,
                steps=[s.to_json() for s in new_steps(kind)],
                target_vm_name=target_vm_name,
                snapshot_ids={},
                params=dict(params or {}),
                revision=revision,
                request_id=request_id or None,
                created_at=now,
                updated_at=now,
            )
            state = row_to_state(row)
            if in_tx is not None:
                in_tx(state)
            return state

        return await finish(self._write(insert))

    async def commit(self, job_id: str, mutate: Mutate, in_tx: InTx | None = None) -> FailoverJobState:
        """Apply `mutate` to the job and write it with a new revision (+ `in_tx`) in one transaction; publish.
        Whole, whatever happens to the caller meanwhile (uninterruptible.finish)."""
        async with self._lock(job_id):

            def write(revision: int) -> FailoverJobState:
                state = row_to_state(_locked_row(job_id))
                mutate(state)
                state.revision = revision
                state.updated_at = utcnow()
                if in_tx is not None:  # may add to the state (a job-log id): the row is written after it
                    in_tx(state)
                FailoverJob.update(**_fields(state)).where(FailoverJob.id == job_id).execute()
                return state

            return await finish(self._write(write))

    async def _write(self, write: Callable[[int], FailoverJobState]) -> FailoverJobState:
        """Reserve a watch revision, run `write` with it in one transaction, publish the result (or abandon the
        revision when the transaction failed, so later changes do not wait for it)."""
        announce = self.announce

        def write_and_announce(revision: int) -> FailoverJobState:
            state = write(revision)
            if announce is not None:
                announce(state.id)
            return state

        state = await commit_at_next_revision(self.db, self.watch, write_and_announce)
        self._publish(state)
        return state

    async def take_foreign(self, job_id: str) -> None:
        """Another OMA process committed the job: its row as stored now is published to this process's watchers,
        under a revision of this process (notifications arrive in commit order and the row read is the newest, so
        what watchers see only moves forward; a row already published is not published again)."""
        async with self._lock(job_id):
            row = await self.db.run(load, job_id)
            if row is None or self._taken.get(job_id) == (row.revision, row.updated_at):
                return
            self._taken[job_id] = (row.revision, row.updated_at)
            row.revision = self.watch.next_revision()
            self._publish(row)

    def change_of(self, state: FailoverJobState) -> Change:
        return Change(state.revision, "failover", state.id, state.vm_context_id, state.copy(), state.final)

    def _publish(self, state: FailoverJobState) -> None:
        self.watch.publish(self.change_of(state))


def _locked_row(job_id: str) -> FailoverJob:
    """The job's row, locked until the commit on PostgreSQL (SQLite has one writer at a time anyway)."""
    row = for_update(FailoverJob.select().where(FailoverJob.id == job_id)).first()
    if row is None:
        raise NotFound(f"failover job {job_id} does not exist", reason="JOB_NOT_FOUND", job_id=job_id)
    return row
