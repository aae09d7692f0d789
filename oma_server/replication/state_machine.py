"""The one state machine of a replication job (DESIGN.md §5).

pending → provisioning → waiting_for_vma → replicating ⇄ stalled → completing → completed; any non-final state →
failed; a cancellable state → cancelling → cancelled. Every status change of a job goes through `transition`, which
sets status, phase, current operation, percent and timestamps together. Illegal transitions raise
FailedPrecondition. Pure functions: the store applies the result in one transaction.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import StrEnum

from loguru import logger

from oma_server.errors import FailedPrecondition


class JobStatus(StrEnum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    WAITING_FOR_VMA = "waiting_for_vma"
    REPLICATING = "replicating"
    STALLED = "stalled"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


FINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
# States in which the appliance may be copying: progress reports are applied only here.
COPYING = frozenset({JobStatus.WAITING_FOR_VMA, JobStatus.REPLICATING, JobStatus.STALLED, JobStatus.CANCELLING})
CANCELLABLE = frozenset(
    {JobStatus.PENDING, JobStatus.PROVISIONING, JobStatus.WAITING_FOR_VMA, JobStatus.REPLICATING, JobStatus.STALLED}
)

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.PROVISIONING, JobStatus.WAITING_FOR_VMA}),
    JobStatus.PROVISIONING: frozenset({JobStatus.WAITING_FOR_VMA}),
    JobStatus.WAITING_FOR_VMA: frozenset({JobStatus.REPLICATING, JobStatus.STALLED, JobStatus.COMPLETING}),
    JobStatus.REPLICATING: frozenset({JobStatus.STALLED, JobStatus.COMPLETING}),
    JobStatus.STALLED: frozenset({JobStatus.REPLICATING, JobStatus.WAITING_FOR_VMA, JobStatus.COMPLETING}),
    JobStatus.COMPLETING: frozenset({JobStatus.COMPLETED}),
    # A copy that finished before the cancel reached the appliance is kept: its data is whole.
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.COMPLETING}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

# What an operator reads while a job sits in a state (current_operation), unless a step says more.
DEFAULT_OPERATION: dict[JobStatus, str] = {
    JobStatus.PENDING: "Queued",
    JobStatus.PROVISIONING: "Provisioning volumes and NBD exports",
    JobStatus.WAITING_FOR_VMA: "Waiting for the appliance to start copying",
    JobStatus.REPLICATING: "Copying",
    JobStatus.STALLED: "Appliance disconnected; waiting for it to return",
    JobStatus.COMPLETING: "Recording change ids",
    JobStatus.COMPLETED: "Completed",
    JobStatus.FAILED: "Failed",
    JobStatus.CANCELLING: "Cancelling on the appliance",
    JobStatus.CANCELLED: "Cancelled",
}


def allowed(src: JobStatus, dst: JobStatus) -> bool:
    if dst == JobStatus.FAILED:
        return src not in FINAL
    if dst == JobStatus.CANCELLING:
        return src in CANCELLABLE
    return dst in _ALLOWED[src]


@dataclasses.dataclass
class DiskState:
    disk_id: str
    disk_key: int
    bytes_done: int = 0
    bytes_total: int = 0
    throughput_bytes_per_second: int = 0
    phase: str = ""
    mode: str = ""
    previous_change_id: str = ""
    new_change_id: str = ""
    completed: bool = False
    nbd_uri: str = ""
    full_copy_reason: str = ""
    resume_token: str = ""
    # Byte ranges an incremental copies whatever changed: blocks a verification found different (the repair).
    repair_extents: tuple[tuple[int, int], ...] = ()
    # Not persisted on purpose: after a restart it reads False, the safe value (the agent then writes zeros too).
    target_is_new: bool = False


@dataclasses.dataclass
class JobState:
    """A replication job as the store holds it in memory; rows are written from it."""

    id: str
    vm_context_id: str
    appliance_id: str
    kind: str
    status: JobStatus
    phase: str = ""
    current_operation: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    percent: float = 0.0
    throughput_bytes_per_second: int = 0
    eta_seconds: float | None = None
    error_reason: str = ""
    error_message: str = ""
    error_class: str = ""
    last_sequence: int = 0
    revision: int = 0
    #: the stored row's version when this state was loaded or last written (writes are fenced on it)
    write_version: int = 0
    retry_of: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    disks: list[DiskState] = dataclasses.field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def disk(self, disk_id: str) -> DiskState | None:
        return next((d for d in self.disks if d.disk_id == disk_id), None)

    def copy(self) -> JobState:
        return dataclasses.replace(self, disks=[dataclasses.replace(d) for d in self.disks])


def carry_progress(source: JobState, target: JobState) -> None:
    """What a progress report changes, from `source` onto `target` (a relayed or newer in-memory state)."""
    for name in PROGRESS_FIELDS:
        setattr(target, name, getattr(source, name))
    by_id = {d.disk_id: d for d in source.disks}
    for disk in target.disks:
        relayed = by_id.get(disk.disk_id)
        if relayed is not None and not disk.completed:
            for name in DISK_PROGRESS_FIELDS:
                setattr(disk, name, getattr(relayed, name))


PROGRESS_FIELDS = (
    "last_sequence",
    "phase",
    "current_operation",
    "bytes_done",
    "bytes_total",
    "percent",
    "throughput_bytes_per_second",
    "eta_seconds",
    "updated_at",
)
DISK_PROGRESS_FIELDS = ("bytes_done", "bytes_total", "throughput_bytes_per_second", "phase", "mode")


def transition(
    job: JobState,
    dst: JobStatus,
    now: datetime,
    *,
    operation: str | None = None,
    error_reason: str = "",
    error_message: str = "",
    error_class: str = "",
) -> JobState:
    """The job after moving to `dst`, as a new object; FailedPrecondition if the move is illegal."""
    if not allowed(job.status, dst):
        logger.bind(job_id=job.id).warning("refused transition {src} → {dst}", src=job.status.value, dst=dst.value)
        raise FailedPrecondition(
            f"replication job {job.id} is {job.status.value}; it cannot become {dst.value}",
            reason="ILLEGAL_TRANSITION",
            job_id=job.id,
            status=job.status.value,
            requested=dst.value,
        )
    new = job.copy()
    new.status = dst
    new.current_operation = operation or DEFAULT_OPERATION[dst]
    new.updated_at = now
    if dst == JobStatus.REPLICATING and new.started_at is None:
        new.started_at = now
    if dst in FINAL:
        new.finished_at = now
        new.throughput_bytes_per_second = 0
        new.eta_seconds = None
    if dst == JobStatus.COMPLETED:
        # Whatever the last progress report said, a completed job is whole: one place sets every field.
        new.percent = 100.0
        new.phase = "done"
        new.bytes_done = max(new.bytes_done, new.bytes_total)
        for disk in new.disks:
            disk.completed = True
            disk.phase = "done"
            disk.bytes_done = max(disk.bytes_done, disk.bytes_total)
            disk.throughput_bytes_per_second = 0
    if dst == JobStatus.FAILED:
        new.error_reason = error_reason or "JOB_FAILED"
        new.error_message = error_message or "the job failed"
        new.error_class = error_class
    logger.bind(job_id=job.id).info("job {src} → {dst}", src=job.status.value, dst=dst.value)
    return new


def percent_of(done: int, total: int) -> float:
    if total <= 0:
        return 0.0
    return min(100.0, 100.0 * done / total)


def complete(job: JobState, now: datetime) -> JobState:
    """The appliance finished: through `completing` to `completed` — or to `failed` when a disk has no change id
    (its next run could not be incremental). One pure step, so the store commits completion whole: a job is never
    left in `completing` by a cut between two commits. A job found in `completing` (an older OMA) ends the same way."""
    done = job if job.status == JobStatus.COMPLETING else transition(job, JobStatus.COMPLETING, now)
    missing = [d.disk_id for d in done.disks if not d.new_change_id]
    if missing:
        return transition(
            done,
            JobStatus.FAILED,
            now,
            error_reason="CHANGE_ID_MISSING",
            error_message=(
                f"the appliance reported completion but no change id for disk(s) {', '.join(missing)}; retry the job"
            ),
        )
    return transition(done, JobStatus.COMPLETED, now)
