"""The live replication job store: the one owner of every replication job's state.

- Holds open jobs in memory; every status change goes through `state_machine.transition` and is committed, with
  the job's disks, in one transaction before it is visible.
- Progress reports from appliances are applied in memory at once (sequence-gated: a report is applied only if its
  sequence is above the job's last applied one; percent never moves backwards), fanned out to watchers at once,
  and written in batches every `flush_interval_s`. Only then are they acked (`ack_sink`), so an ack always means
  "durably stored".
- Events (started, disk completed with its change id, completed, failed, cancelled) are committed at once, in the
  same transaction as any progress of that job not yet written, before they are acked.

Writes of job state are serialized by one lock so a batched flush and an event commit never reorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import peewee as pw
from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import ChangeIdRecord, Disk, FailoverJob, JobDisk, ReplicationJob
from oma_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from oma_server.joblog import note
from oma_server.pagination import fetch_page
from oma_server.replication.state_machine import (
    COPYING,
    DiskState,
    JobState,
    JobStatus,
    percent_of,
    transition,
)
from oma_server.watch import Change, WatchHub
from vma.v1 import stream_pb2

FLUSH_SLICES = 10


def flush_slice(job_id: str) -> int:
    return zlib.crc32(job_id.encode()) % FLUSH_SLICES


AckSink = Callable[[str, str, int], None]  # (appliance_id, job_id, durable sequence)
InTxHook = Callable[[JobState], None]  # runs inside the transaction that makes a job final
AfterCommit = Callable[[JobState, JobState], Awaitable[None] | None]  # (before, after), after commit


class MessageRejected(Exception):
    """One stream message cannot be applied; nothing of it was. `code` is a StreamErrorCode name suffix."""

    def __init__(self, code: str, message: str, job_id: str = "", sequence: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id
        self.sequence = sequence


def phase_name(value: int) -> str:
    return "" if not value else stream_pb2.CopyPhase.Name(value).removeprefix("COPY_PHASE_").lower()  # type: ignore[arg-type]


def mode_name(value: int) -> str:
    return "" if not value else stream_pb2.CopyMode.Name(value).removeprefix("COPY_MODE_").lower()  # type: ignore[arg-type]


def error_class_name(value: int) -> str:
    return "" if not value else stream_pb2.ErrorClass.Name(value).removeprefix("ERROR_CLASS_").lower()  # type: ignore[arg-type]


def _row_to_state(row: ReplicationJob, disks: Iterable[JobDisk]) -> JobState:
    return JobState(
        id=row.id,
        vm_context_id=row.vm_context_id,
        appliance_id=row.appliance_id,
        kind=row.kind,
        status=JobStatus(row.status),
        phase=row.phase,
        current_operation=row.current_operation,
        bytes_done=row.bytes_done,
        bytes_total=row.bytes_total,
        percent=row.percent,
        throughput_bytes_per_second=row.throughput_bytes_per_second,
        eta_seconds=row.eta_seconds,
        error_reason=row.error_reason,
        error_message=row.error_message,
        error_class=row.error_class,
        last_sequence=row.last_sequence,
        revision=row.revision,
        retry_of=row.retry_of,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        updated_at=row.updated_at,
        disks=[
            DiskState(
                disk_id=d.disk_id,
                disk_key=d.disk.key,
                bytes_done=d.bytes_done,
                bytes_total=d.bytes_total,
                throughput_bytes_per_second=d.throughput_bytes_per_second,
                phase=d.phase,
                mode=d.mode,
                previous_change_id=d.previous_change_id,
                new_change_id=d.new_change_id,
                completed=d.completed,
                nbd_uri=d.nbd_uri,
                full_copy_reason=d.full_copy_reason,
                resume_token=d.resume_token,
            )
            for d in sorted(disks, key=lambda d: d.disk.unit_number)
        ],
    )


def _load(job_id: str) -> JobState | None:
    row = ReplicationJob.get_or_none(ReplicationJob.id == job_id)
    if row is None:
        return None
    disks = list(JobDisk.select(JobDisk, Disk).join(Disk).where(JobDisk.job == job_id))
    return _row_to_state(row, disks)


_JOB_COLUMNS = (
    "status",
    "phase",
    "current_operation",
    "bytes_done",
    "bytes_total",
    "percent",
    "throughput_bytes_per_second",
    "eta_seconds",
    "error_reason",
    "error_message",
    "error_class",
    "last_sequence",
    "revision",
    "started_at",
    "finished_at",
    "updated_at",
)
_DISK_COLUMNS = (
    "bytes_done",
    "bytes_total",
    "throughput_bytes_per_second",
    "phase",
    "mode",
    "previous_change_id",
    "new_change_id",
    "completed",
    "nbd_uri",
    "full_copy_reason",
    "resume_token",
)


def _update_sql(model: type[pw.Model], columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    meta = model._meta  # type: ignore[attr-defined]
    param = meta.database.param
    sets = ", ".join(f"{meta.fields[c].column_name} = {param}" for c in columns)
    where = " AND ".join(f"{meta.fields[k].column_name} = {param}" for k in keys)
    return f"UPDATE {meta.table_name} SET {sets} WHERE {where}"


def _row_values(model: type[pw.Model], columns: tuple[str, ...], obj: object) -> list[object]:
    fields = model._meta.fields  # type: ignore[attr-defined]
    values = []
    for column in columns:
        value = getattr(obj, column)
        if column == "current_operation":
            value = value[:512]
        values.append(fields[column].db_value(value.value if isinstance(value, JobStatus) else value))
    return values


def _write_batch(states: list[JobState]) -> None:
    """Write jobs and their disks as they are in `states` (inside the caller's transaction).

    Two prepared UPDATEs run with executemany: building Peewee queries per row cost ~0.4 ms a job, which at a
    thousand jobs a second held the GIL long enough to delay every watcher (measured in bench.progress).
    """
    if not states:
        return
    db = ReplicationJob._meta.database  # type: ignore[attr-defined]
    job_rows = [[*_row_values(ReplicationJob, _JOB_COLUMNS, s), s.id] for s in states]
    disk_rows = [[*_row_values(JobDisk, _DISK_COLUMNS, d), s.id, d.disk_id] for s in states for d in s.disks]
    cursor = db.cursor()
    cursor.executemany(_update_sql(ReplicationJob, _JOB_COLUMNS, ("id",)), job_rows)
    if disk_rows:
        cursor.executemany(_update_sql(JobDisk, _DISK_COLUMNS, ("job", "disk")), disk_rows)


def _write(state: JobState) -> None:
    _write_batch([state])


@dataclass(frozen=True)
class JobPage:
    jobs: list[JobState]
    next_page_token: str


class ReplicationJobStore:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        watch: WatchHub,
        *,
        flush_interval_s: float = 1.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.watch = watch
        self.flush_interval_s = flush_interval_s
        self.ack_sink: AckSink | None = None
        self.final_hooks: list[InTxHook] = []
        self.after_commit: list[AfterCommit] = []
        self._jobs: dict[str, JobState] = {}
        self._durable_seq: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._write_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0

    # ---- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        def load_open() -> tuple[list[JobState], int]:
            open_ids = [
                r.id
                for r in ReplicationJob.select(ReplicationJob.id).where(
                    ReplicationJob.status.not_in(["completed", "failed", "cancelled"])
                )
            ]
            latest = max(
                ReplicationJob.select(pw.fn.MAX(ReplicationJob.revision)).scalar() or 0,
                FailoverJob.select(pw.fn.MAX(FailoverJob.revision)).scalar() or 0,
            )
            return [s for s in (_load(i) for i in open_ids) if s is not None], int(latest)

        jobs, latest = await self.db.run(load_open)
        self.watch.reset(latest)
        for job in jobs:
            self._jobs[job.id] = job
            self._durable_seq[job.id] = job.last_sequence
        self._flusher = asyncio.create_task(self._flush_loop(), name="progress-flusher")
        logger.info("replication job store ready: {n} open jobs, revision {rev}", n=len(jobs), rev=latest)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()

    # ---- reads ----------------------------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobState:
        job = await self._lookup(job_id)
        if job is None:
            raise NotFound(
                f"replication job {job_id} does not exist; list jobs with ListReplicationJobs",
                reason="JOB_NOT_FOUND",
                job_id=job_id,
            )
        return job.copy()

    async def _lookup(self, job_id: str) -> JobState | None:
        if not job_id:
            raise InvalidArgument("job id is required", reason="JOB_ID_MISSING")
        job = self._jobs.get(job_id)
        if job is None:
            job = await self.db.run(_load, job_id)
            if job is not None and job_id not in self._jobs:
                self._jobs[job_id] = job
                self._durable_seq[job_id] = job.last_sequence
            job = self._jobs.get(job_id, job)
        return job

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
        wanted = list(statuses)
        q = ReplicationJob.select(ReplicationJob.id).order_by(ReplicationJob.created_at.desc(), ReplicationJob.id)
        if vm_context_id:
            q = q.where(ReplicationJob.vm_context == vm_context_id)
        if appliance_id:
            q = q.where(ReplicationJob.appliance == appliance_id)
        if wanted:
            q = q.where(ReplicationJob.status.in_(wanted))
        rows, token = await self.db.run(fetch_page, q, page_size, page_token)
        # Open jobs come from memory (their latest progress may not be written yet), the rest from the database.
        return JobPage([await self.get(r.id) for r in rows], token)

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

    # ---- creation and transitions -----------------------------------------------------------------------------
    async def create(
        self,
        *,
        vm_context_id: str,
        appliance_id: str,
        kind: str,
        disks: list[DiskState],
        request_id: str | None = None,
        retry_of: str = "",
        in_tx: Callable[[JobState], None] | None = None,
    ) -> JobState:
        """A new pending job with its disks; `in_tx` runs in the same transaction (the workflow's own bookkeeping)."""
        now = self.clock.now()
        async with self._write_lock:
            revision = self.watch.next_revision()

            def insert() -> JobState:
                try:
                    row = ReplicationJob.create(
                        vm_context=vm_context_id,
                        appliance=appliance_id,
                        kind=kind,
                        status=JobStatus.PENDING.value,
                        current_operation="Queued",
                        request_id=request_id or None,
                        retry_of=retry_of,
                        revision=revision,
                        created_at=now,
                        updated_at=now,
                    )
                except pw.IntegrityError as exc:
                    raise AlreadyExists(
                        f"a replication job with request_id {request_id!r} already exists",
                        reason="REQUEST_ID_REUSED",
                    ) from exc
                for disk in disks:
                    JobDisk.create(
                        job=row.id,
                        disk=disk.disk_id,
                        bytes_total=disk.bytes_total,
                        mode=disk.mode,
                        previous_change_id=disk.previous_change_id,
                        nbd_uri=disk.nbd_uri,
                        full_copy_reason=disk.full_copy_reason,
                    )
                state = _load(row.id)
                assert state is not None
                if in_tx is not None:
                    in_tx(state)
                return state

            state = await self.db.tx(insert)
            self._jobs[state.id] = state
            self._durable_seq[state.id] = 0
            self._publish(state)
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
        in_tx: Callable[[JobState], None] | None = None,
    ) -> JobState:
        """Move a job to `dst` durably (FailedPrecondition when illegal); `mutate` edits the new state first."""
        if await self._lookup(job_id) is None:
            await self.get(job_id)  # raises NotFound
        async with self._write_lock:
            before = self._jobs[job_id]
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
            await self._commit(before, after, in_tx=in_tx)
        await self._run_after_commit(before, after)
        return after.copy()

    async def update(self, job_id: str, mutate: Callable[[JobState], None], operation: str | None = None) -> JobState:
        """Change fields other than status (the workflow's disk targets, operation text) durably."""
        if await self._lookup(job_id) is None:
            await self.get(job_id)
        async with self._write_lock:
            before = self._jobs[job_id]
            after = before.copy()
            mutate(after)
            if operation is not None:
                after.current_operation = operation
            after.updated_at = self.clock.now()
            await self._commit(before, after)
        return after.copy()

    async def _commit(self, before: JobState, after: JobState, in_tx: Callable[[JobState], None] | None = None) -> None:
        """Write `after` (with a new revision) in one transaction, then make it the live state and publish it."""
        after.revision = self.watch.next_revision()
        hooks = list(self.final_hooks) if after.final and not before.final else []

        def write() -> None:
            _write(after)
            if in_tx is not None:
                in_tx(after)
            for hook in hooks:
                hook(after)

        await self.db.tx(write)
        self._jobs[after.id] = after
        self._dirty.discard(after.id)
        self._durable_seq[after.id] = after.last_sequence
        self._publish(after)

    async def _run_after_commit(self, before: JobState, after: JobState) -> None:
        for callback in self.after_commit:
            try:
                result = callback(before, after)
                if result is not None:
                    await result
            except Exception:
                logger.opt(exception=True).bind(job_id=after.id).error("after-commit callback failed")

    def _publish(self, state: JobState) -> None:
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

    # ---- messages from appliances -----------------------------------------------------------------------------
    async def _job_of(self, appliance_id: str, job_id: str, sequence: int) -> JobState:
        if not job_id:
            raise MessageRejected("INVALID_MESSAGE", "the message names no job_id", job_id, sequence)
        if sequence <= 0:
            raise MessageRejected("INVALID_MESSAGE", f"sequence must be 1 or more (job {job_id})", job_id, sequence)
        job = await self._lookup(job_id)
        if job is None:
            raise MessageRejected(
                "UNKNOWN_JOB", f"job {job_id} is not known to this OMA; stop reporting it", job_id, sequence
            )
        if job.appliance_id != appliance_id:
            raise MessageRejected(
                "FOREIGN_JOB", f"job {job_id} belongs to another appliance; nothing was applied", job_id, sequence
            )
        return job

    async def apply_progress(self, appliance_id: str, report: stream_pb2.ProgressReport) -> int | None:
        """Apply a progress report in memory. Returns a sequence to ack now (a duplicate or a report about a finished
        job), or None when the ack follows the next batched write. Raises MessageRejected."""
        job = await self._job_of(appliance_id, report.job_id, report.sequence)
        if report.sequence <= job.last_sequence or job.final:
            return self._durable_seq.get(job.id, 0) if report.sequence <= job.last_sequence else report.sequence
        if job.status not in COPYING:
            raise MessageRejected(
                "INVALID_STATE",
                f"job {job.id} is {job.status.value}; progress is accepted only once the copy was commanded",
                job.id,
                report.sequence,
            )
        if report.bytes_total and report.bytes_done > report.bytes_total:
            raise MessageRejected(
                "INVALID_MESSAGE",
                f"bytes_done {report.bytes_done} exceeds bytes_total {report.bytes_total} (job {job.id})",
                job.id,
                report.sequence,
            )
        for d in report.disks:
            if job.disk(d.disk_id) is None:
                raise MessageRejected(
                    "INVALID_MESSAGE", f"disk {d.disk_id!r} is not part of job {job.id}", job.id, report.sequence
                )
            if d.bytes_total and d.bytes_done > d.bytes_total:
                raise MessageRejected(
                    "INVALID_MESSAGE",
                    f"disk {d.disk_id}: bytes_done {d.bytes_done} exceeds bytes_total {d.bytes_total}",
                    job.id,
                    report.sequence,
                )
        if job.status in (JobStatus.WAITING_FOR_VMA, JobStatus.STALLED):
            # The appliance is evidently copying: the state machine moves the job, durably, before the progress.
            await self.transition(job.id, JobStatus.REPLICATING)
            job = self._jobs[job.id]
        self._apply_report(job, report)
        job.revision = self.watch.next_revision()
        self._dirty.add(job.id)
        self._publish(job)
        return None

    def _apply_report(self, job: JobState, report: stream_pb2.ProgressReport) -> None:
        job.last_sequence = report.sequence
        if report.phase:
            job.phase = phase_name(report.phase)
        if report.current_operation and job.status == JobStatus.REPLICATING:
            job.current_operation = report.current_operation[:512]
        job.bytes_done = report.bytes_done
        job.bytes_total = report.bytes_total or job.bytes_total
        job.percent = max(job.percent, percent_of(job.bytes_done, job.bytes_total))
        job.throughput_bytes_per_second = report.throughput_bytes_per_second
        job.eta_seconds = report.eta.ToTimedelta().total_seconds() if report.HasField("eta") else None
        job.updated_at = self.clock.now()
        for d in report.disks:
            disk = job.disk(d.disk_id)
            if disk is None or disk.completed:
                continue
            disk.bytes_done = d.bytes_done
            disk.bytes_total = d.bytes_total or disk.bytes_total
            disk.throughput_bytes_per_second = d.throughput_bytes_per_second
            if d.phase:
                disk.phase = phase_name(d.phase)
            if d.mode:
                disk.mode = mode_name(d.mode)
            if d.resume_token:
                disk.resume_token = d.resume_token

    async def apply_event(self, appliance_id: str, event: stream_pb2.JobEvent) -> int:
        """Apply an event durably; returns the sequence to ack. Raises MessageRejected."""
        job = await self._job_of(appliance_id, event.job_id, event.sequence)
        if event.sequence <= job.last_sequence:
            return self._durable_seq.get(job.id, 0)
        kind = event.WhichOneof("event")
        if kind is None:
            raise MessageRejected("INVALID_MESSAGE", f"event for job {job.id} carries nothing", job.id, event.sequence)
        if job.final:
            # Already final (say, failed by the operator): record that the appliance said more, change nothing.
            await self._advance_sequence(job.id, event.sequence, f"{kind} event after the job was {job.status}")
            return event.sequence
        if kind == "disk_completed":
            return await self._disk_completed(job, event)
        target = {
            "started": JobStatus.REPLICATING,
            "completed": JobStatus.COMPLETED,
            "failed": JobStatus.FAILED,
            "cancelled": JobStatus.CANCELLED,
        }[kind]
        if kind == "started" and job.status in (JobStatus.REPLICATING, JobStatus.CANCELLING):
            # Already copying, or a cancel overtook the start: record the sequence, keep the status.
            await self._advance_sequence(job.id, event.sequence)
            return event.sequence
        if kind == "completed":
            await self._complete(job, event)
            return event.sequence
        if kind == "cancelled" and job.status != JobStatus.CANCELLING:
            await self._transition_with_sequence(job, JobStatus.CANCELLING, event.sequence)
        if kind == "failed":
            failure = event.failed
            await self._transition_with_sequence(
                job,
                JobStatus.FAILED,
                event.sequence,
                error_reason=f"VMA_{error_class_name(failure.error_class).upper() or 'ERROR'}",
                error_message=failure.detail or "the appliance reported a failure without detail",
                error_class=error_class_name(failure.error_class),
            )
            return event.sequence
        await self._transition_with_sequence(job, target, event.sequence)
        return event.sequence

    async def _transition_with_sequence(
        self,
        job: JobState,
        dst: JobStatus,
        sequence: int,
        *,
        error_reason: str = "",
        error_message: str = "",
        error_class: str = "",
    ) -> None:
        def set_sequence(state: JobState) -> None:
            state.last_sequence = max(state.last_sequence, sequence)

        try:
            await self.transition(
                job.id,
                dst,
                mutate=set_sequence,
                error_reason=error_reason,
                error_message=error_message,
                error_class=error_class,
            )
        except FailedPrecondition as exc:
            raise MessageRejected("INVALID_STATE", exc.message, job.id, sequence) from exc

    async def _advance_sequence(self, job_id: str, sequence: int, log_note: str = "") -> None:
        def set_sequence(state: JobState) -> None:
            state.last_sequence = max(state.last_sequence, sequence)

        async with self._write_lock:
            before = self._jobs[job_id]
            after = before.copy()
            set_sequence(after)
            after.updated_at = self.clock.now()
            await self._commit(
                before, after, in_tx=(lambda s: note(job_id, "vma_event", log_note)) if log_note else None
            )

    async def _disk_completed(self, job: JobState, event: stream_pb2.JobEvent) -> int:
        done = event.disk_completed
        if job.disk(done.disk_id) is None:
            raise MessageRejected(
                "INVALID_MESSAGE", f"disk {done.disk_id!r} is not part of job {job.id}", job.id, event.sequence
            )
        if not done.change_id:
            raise MessageRejected(
                "INVALID_MESSAGE",
                f"disk {done.disk_id} completed without a change id (job {job.id})",
                job.id,
                event.sequence,
            )
        async with self._write_lock:
            before = self._jobs[job.id]
            after = before.copy()
            after.last_sequence = event.sequence
            after.updated_at = self.clock.now()
            disk = after.disk(done.disk_id)
            assert disk is not None
            disk.completed = True
            disk.phase = "done"
            disk.new_change_id = done.change_id
            disk.bytes_done = max(disk.bytes_done, disk.bytes_total)
            disk.throughput_bytes_per_second = 0
            if done.mode:
                disk.mode = mode_name(done.mode)

            def record_change_id(state: JobState) -> None:
                Disk.update(last_change_id=done.change_id, replicated_capacity_bytes=Disk.capacity_bytes).where(
                    Disk.id == done.disk_id
                ).execute()
                ChangeIdRecord.create(disk=done.disk_id, change_id=done.change_id, job_id=job.id)
                note(job.id, "disk_completed", f"disk {done.disk_id}: change id {done.change_id} recorded")

            await self._commit(before, after, in_tx=record_change_id)
        return event.sequence

    async def _complete(self, job: JobState, event: stream_pb2.JobEvent) -> None:
        """completing → completed in order, both durable; the event's sequence is recorded with the first step."""
        if job.status != JobStatus.COMPLETING:
            await self._transition_with_sequence(job, JobStatus.COMPLETING, event.sequence)
        missing = [d.disk_id for d in self._jobs[job.id].disks if not d.new_change_id]
        if missing:
            await self.transition(
                job.id,
                JobStatus.FAILED,
                error_reason="CHANGE_ID_MISSING",
                error_message=(
                    f"the appliance reported completion but no change id for disk(s) {', '.join(missing)}; "
                    "retry the job"
                ),
            )
            return
        await self.transition(job.id, JobStatus.COMPLETED)

    # ---- liveness -----------------------------------------------------------------------------------------------
    async def stall_jobs_of(self, appliance_id: str) -> list[str]:
        stalled = []
        for job in self.open_jobs(appliance_id):
            if job.status in (JobStatus.REPLICATING, JobStatus.WAITING_FOR_VMA):
                await self.transition(job.id, JobStatus.STALLED)
                stalled.append(job.id)
        return stalled

    async def resume_jobs_of(self, appliance_id: str) -> list[str]:
        resumed = []
        for job in self.open_jobs(appliance_id):
            if job.status == JobStatus.STALLED:
                dst = JobStatus.REPLICATING if job.started_at is not None else JobStatus.WAITING_FOR_VMA
                await self.transition(job.id, dst)
                resumed.append(job.id)
        return resumed

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
        async with self._write_lock:
            chosen = [j for j in self._dirty if slice_ is None or flush_slice(j) == slice_]
            batch = [self._jobs[j].copy() for j in chosen if j in self._jobs]
            self._dirty.difference_update(chosen)

            def write_all() -> None:
                _write_batch(batch)

            try:
                await self.db.tx(write_all)
            except Exception:
                self._dirty.update(s.id for s in batch)
                raise
            self.flushes += 1
        for state in batch:
            self._durable_seq[state.id] = max(self._durable_seq.get(state.id, 0), state.last_sequence)
            if self.ack_sink is not None:
                self.ack_sink(state.appliance_id, state.id, self._durable_seq[state.id])
        return len(batch)

    def durable_sequence(self, job_id: str) -> int:
        return self._durable_seq.get(job_id, 0)
