"""Applying what an appliance says about its jobs: progress reports and events (decoded and checked by the codec).

Each message is checked whole against the job's state — the job exists and is the appliance's, its sequence is new,
the job accepts it in its status, its disks belong to the job, its bytes stay within the totals (the stored ones when
the report leaves them out) — before anything of it is applied, under the job's lock; a refused message changes
nothing, so its corrected resend is applied. Reports are sequence-gated: applied only above the job's last applied
sequence (duplicates and stale reports are acked and ignored; percent never moves backwards).

Events are units of work (store.change_locked): committed whole, then acked. Completion is one unit — through
`completing` to `completed` in one transaction (state_machine.complete) — so a cut can never leave a job half
completed.
"""

from __future__ import annotations

from collections.abc import Callable

from oma_server import metrics
from oma_server.clock import Clock
from oma_server.errors import FailedPrecondition, MessageRejected
from oma_server.integrity import maps
from oma_server.joblog import note
from oma_server.protocol.stream import EventKind, JobEvent, ProgressReport
from oma_server.replication.state_machine import COPYING, JobState, JobStatus, complete, percent_of, transition
from oma_server.replication.store import InTxHook, Make, ReplicationJobStore


class AlreadyApplied(Exception):
    """The event's sequence is already in the job's stored state (applied by another OMA process meanwhile)."""


class VmaMessageApplier:
    def __init__(self, store: ReplicationJobStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def _job_of(self, appliance_id: str, job_id: str, sequence: int) -> JobState:
        job = await self.store.lookup(job_id)
        if job is None:
            raise MessageRejected(
                "UNKNOWN_JOB", f"job {job_id} is not known to this OMA; stop reporting it", job_id, sequence
            )
        if job.appliance_id != appliance_id:
            raise MessageRejected(
                "FOREIGN_JOB", f"job {job_id} belongs to another appliance; nothing was applied", job_id, sequence
            )
        return job

    # ---- progress ---------------------------------------------------------------------------------------------
    async def apply_progress(self, appliance_id: str, report: ProgressReport) -> int | None:
        """Apply a progress report in memory. Returns a sequence to ack now (a duplicate, or a report about a finished
        job), or None when the ack follows the next batched write. Raises MessageRejected."""
        job = await self._job_of(appliance_id, report.job_id, report.sequence)
        async with self.store.job_lock(job.id):
            job = self.store.cached(job.id) or job
            if report.sequence <= job.last_sequence:
                return self.store.durable_sequence(job.id)
            if job.final:
                return report.sequence  # nothing more to do for it; the appliance may stop resending
            self._check_report(job, report)
            if job.status in (JobStatus.WAITING_FOR_VMA, JobStatus.STALLED):
                # The appliance is evidently copying: the state machine moves the job, durably, before the progress.
                job = await self.store.change_locked(
                    job.id, lambda before: transition(before, JobStatus.REPLICATING, self.clock.now())
                )
            self._apply_report(job, report)
            self.store.touch_in_memory(job)
        return None

    @staticmethod
    def _check_report(job: JobState, report: ProgressReport) -> None:
        def refuse(code: str, problem: str) -> MessageRejected:
            return MessageRejected(code, f"{problem}; nothing was applied", job.id, report.sequence)

        if job.status not in COPYING:
            raise refuse(
                "INVALID_STATE",
                f"job {job.id} is {job.status.value}; progress is accepted only once the copy was commanded",
            )
        # The job's total: as reported, else as stored, else at most what its disks hold (when all of them know).
        disk_totals = [d.bytes_total for d in job.disks]
        total = report.bytes_total or job.bytes_total or (sum(disk_totals) if all(disk_totals) else 0)
        if total and report.bytes_done > total:
            raise refuse("INVALID_MESSAGE", f"job {job.id}: bytes_done {report.bytes_done} exceeds bytes_total {total}")
        for d in report.disks:
            disk = job.disk(d.disk_id)
            if disk is None:
                raise refuse("INVALID_MESSAGE", f"disk {d.disk_id!r} is not part of job {job.id}")
            disk_total = d.bytes_total or disk.bytes_total
            if disk_total and d.bytes_done > disk_total:
                raise refuse(
                    "INVALID_MESSAGE", f"disk {d.disk_id}: bytes_done {d.bytes_done} exceeds bytes_total {disk_total}"
                )

    def _apply_report(self, job: JobState, report: ProgressReport) -> None:
        job.last_sequence = report.sequence
        if report.phase:
            job.phase = report.phase
        if report.current_operation and job.status == JobStatus.REPLICATING:
            job.current_operation = report.current_operation
        metrics.bytes_copied(job.appliance_id, report.bytes_done - job.bytes_done)
        job.bytes_done = report.bytes_done
        job.bytes_total = report.bytes_total or job.bytes_total
        job.percent = max(job.percent, percent_of(job.bytes_done, job.bytes_total))
        job.throughput_bytes_per_second = report.throughput_bytes_per_second
        job.eta_seconds = report.eta_seconds
        job.updated_at = self.clock.now()
        for d in report.disks:
            disk = job.disk(d.disk_id)
            if disk is None or disk.completed:
                continue
            disk.bytes_done = d.bytes_done
            disk.bytes_total = d.bytes_total or disk.bytes_total
            disk.throughput_bytes_per_second = d.throughput_bytes_per_second
            if d.phase:
                disk.phase = d.phase
            if d.mode:
                disk.mode = d.mode
            if d.resume_token:
                disk.resume_token = d.resume_token

    # ---- events -----------------------------------------------------------------------------------------------
    async def apply_event(self, appliance_id: str, event: JobEvent) -> int:
        """Apply an event durably; returns the sequence to ack. Raises MessageRejected."""
        job = await self._job_of(appliance_id, event.job_id, event.sequence)
        async with self.store.job_lock(job.id):
            job = self.store.cached(job.id) or job
            if event.sequence <= job.last_sequence:
                return self.store.durable_sequence(job.id)
            make, in_tx = self._event_change(job, event)
            try:
                await self.store.change_locked(job.id, make, in_tx)
            except AlreadyApplied:
                return self.store.durable_sequence(job.id)
            except FailedPrecondition as exc:
                raise MessageRejected("INVALID_STATE", exc.message, job.id, event.sequence) from exc
        return event.sequence

    def _event_change(self, job: JobState, event: JobEvent) -> tuple[Make, InTxHook | None]:
        """What the event does to the job (a pure step) and what it records beside it, in the same transaction."""
        now = self.clock.now()

        def with_sequence(step: Make) -> Make:
            def make(before: JobState) -> JobState:
                if before.last_sequence >= event.sequence:  # the unit runs again on a state stored meanwhile
                    raise AlreadyApplied
                after = step(before)
                after.last_sequence = max(after.last_sequence, event.sequence)
                after.updated_at = now
                return after

            return make

        def unchanged(before: JobState) -> JobState:
            return before.copy()

        if job.final:
            # Already final (say, failed by the operator): record that the appliance said more, change nothing.
            return with_sequence(unchanged), lambda s: note(
                s.id, "vma_event", f"{event.kind} event after the job was {s.status.value}"
            )
        kind = event.kind
        if kind == EventKind.DISK_COMPLETED:
            return self._disk_completed(job, event, with_sequence)
        if kind == EventKind.BLOCK_HASHES:
            _check_disk(job, event)
            return with_sequence(unchanged), lambda s: maps.record_source_hashes(
                s.id, event.disk_id, event.hash_runs, event.piece_hashes, event.sequence
            )
        if kind == EventKind.STARTED:
            if job.status in (JobStatus.REPLICATING, JobStatus.CANCELLING):
                # Already copying, or a cancel overtook the start: record the sequence, keep the status.
                return with_sequence(unchanged), None
            return with_sequence(lambda s: transition(s, JobStatus.REPLICATING, now)), None
        if kind == EventKind.COMPLETED:
            return with_sequence(lambda s: complete(s, now)), None
        if kind == EventKind.FAILED:
            reason = f"VMA_{event.error_class.upper() or 'ERROR'}"
            detail = event.detail or "the appliance reported a failure without detail"
            return (
                with_sequence(
                    lambda s: transition(
                        s,
                        JobStatus.FAILED,
                        now,
                        error_reason=reason,
                        error_message=detail,
                        error_class=event.error_class,
                    )
                ),
                None,
            )

        def cancelled(before: JobState) -> JobState:
            if before.status != JobStatus.CANCELLING:
                before = transition(before, JobStatus.CANCELLING, now)
            return transition(before, JobStatus.CANCELLED, now)

        return with_sequence(cancelled), None

    def _disk_completed(
        self, job: JobState, event: JobEvent, with_sequence: Callable[[Make], Make]
    ) -> tuple[Make, InTxHook]:
        _check_disk(job, event)

        def mark_done(before: JobState) -> JobState:
            after = before.copy()
            disk = after.disk(event.disk_id)
            assert disk is not None
            disk.completed = True
            disk.phase = "done"
            disk.new_change_id = event.change_id
            disk.bytes_done = max(disk.bytes_done, disk.bytes_total)
            disk.throughput_bytes_per_second = 0
            if event.mode:
                disk.mode = event.mode
            return after

        def record_change_id(state: JobState) -> None:
            # A full copy rewrote the whole replica: its read-back covers every block, whatever was reported.
            disk = state.disk(event.disk_id)
            full = (event.mode or (disk.mode if disk else "")) != "incremental"
            synced = None if full else event.copied_extents
            if synced is not None and disk is not None and disk.repair_extents:
                # the blocks repaired are read back whatever the appliance says it copied
                synced = (*synced, *disk.repair_extents)
            self.store.repo.record_change_id(state.id, event.disk_id, event.change_id, synced)

        return with_sequence(mark_done), record_change_id


def _check_disk(job: JobState, event: JobEvent) -> None:
    if job.disk(event.disk_id) is None:
        raise MessageRejected(
            "INVALID_MESSAGE",
            f"disk {event.disk_id!r} is not part of job {job.id}; nothing was applied",
            job.id,
            event.sequence,
        )
