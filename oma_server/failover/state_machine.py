"""The one state machine of a failover job and its steps (DESIGN.md §5).

A failover job (kind test | live | cleanup | rollback, a one-step source power job, or a verification of the
replicas at rest) is a list of named steps run
in order. Job: `pending → running → completed | failed | cancelled`. Step: `pending → running → completed | skipped |
failed | cancelled`; a step left `running` by a crash runs again (its `attempts` grows) — every step is idempotent.
Everything here is pure: the store (store.py) applies these functions to a job inside the transaction that writes
it, so a job's status, its steps and the VM context's status change together.

Cancelling: a pending job, or one between steps, or one in a step of `INTERRUPTIBLE` (it only reads or waits; what
it leaves is what cleanup removes anyway) stops at once. Any other step has sent CloudStack or the appliance a request
whose answer must be recorded (a deployed VM, an attached volume, a power command), so the job is only marked
`cancel_requested` and stops when that step ends. Cleanup and rollback are never cancelled (`UNDO`): they exist to
bring everything back, and a half-done undo is worse than a finished one.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import StrEnum
from typing import Any

from oma_server.errors import FailedPrecondition


class FailoverKind(StrEnum):
    TEST = "test"
    LIVE = "live"
    CLEANUP = "cleanup"
    ROLLBACK = "rollback"
    POWER_ON_SOURCE = "power_on_source"
    POWER_OFF_SOURCE = "power_off_source"
    VERIFY = "verify"  # VerifyVmContext: the replicas at rest read back and compared with their maps


class FailoverStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SCHEDULED = "scheduled"  # a live failover waiting for its start time; nothing claimed yet


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


FINAL = (FailoverStatus.COMPLETED, FailoverStatus.FAILED, FailoverStatus.CANCELLED)
RUNNABLE = (FailoverStatus.PENDING, FailoverStatus.RUNNING)  # a runner works on it (or should: resume, janitor)
OPEN = (FailoverStatus.SCHEDULED, *RUNNABLE)  # not ended: the VM has this job
STEP_DONE = (StepStatus.COMPLETED, StepStatus.SKIPPED)
FAILOVERS = (FailoverKind.TEST, FailoverKind.LIVE)
UNDO = (FailoverKind.CLEANUP, FailoverKind.ROLLBACK)
POWER = (FailoverKind.POWER_ON_SOURCE, FailoverKind.POWER_OFF_SOURCE)
# Kinds that claim the VM context but leave its status as it was, whatever their end (failover/at_rest.py).
KEEPS_STATUS = (FailoverKind.VERIFY,)

# The step lists per kind (the order). Live failover = power off + final sync + the test-failover steps.
TEST_STEPS: tuple[str, ...] = (
    "validate",
    "snapshot_volumes",
    "detach_from_oma",
    "deploy_vm",
    "remove_template_root",
    "attach_volumes",
    "inject_drivers",
    "start_vm",
    "verify_running",
)
LIVE_STEPS: tuple[str, ...] = ("validate", "power_off_source", "final_sync", *TEST_STEPS[1:])
# Detach comes before destroy: destroying with expunge deletes the VM's ROOT volume — which is our OS disk.
CLEANUP_STEPS: tuple[str, ...] = (
    "stop_vm",
    "detach_from_vm",
    "destroy_vm",
    "revert_volumes",
    "delete_snapshots",
    "release_volumes",
)
ROLLBACK_STEPS: tuple[str, ...] = (*CLEANUP_STEPS, "power_on_source")

STEPS: dict[FailoverKind, tuple[str, ...]] = {
    FailoverKind.TEST: TEST_STEPS,
    FailoverKind.LIVE: LIVE_STEPS,
    FailoverKind.CLEANUP: CLEANUP_STEPS,
    FailoverKind.ROLLBACK: ROLLBACK_STEPS,
    FailoverKind.POWER_ON_SOURCE: ("power_on_source",),
    FailoverKind.POWER_OFF_SOURCE: ("power_off_source",),
    # the mismatches are found in read_back and reported (the job failed) only after the replicas were released
    FailoverKind.VERIFY: ("attach_replicas", "read_back", "release_replicas", "report"),
}
# Steps a cancel may stop half-way: they read, or wait for something that cleanup handles whatever its state (the
# final sync is cancelled with them; a snapshot still being taken is found by its name and removed).
INTERRUPTIBLE = frozenset({"validate", "final_sync", "snapshot_volumes", "verify_running", "read_back"})


def iso_text(value: datetime | None) -> str:
    """A datetime as it is kept in a job's JSON ("" for none)."""
    return value.isoformat() if value else ""


def parse_iso(value: object) -> datetime | None:
    """The datetime `iso_text` wrote (None for "")."""
    return datetime.fromisoformat(str(value)) if value else None


@dataclasses.dataclass
class FailoverStep:
    name: str
    status: StepStatus = StepStatus.PENDING
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str = ""
    attempts: int = 0
    message: str = ""
    log_id: int = 0  # the JobLog entry of the current attempt

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "started_at": iso_text(self.started_at),
            "finished_at": iso_text(self.finished_at),
            "error": self.error,
            "attempts": self.attempts,
            "message": self.message,
            "log_id": self.log_id,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FailoverStep:
        return cls(
            name=str(raw["name"]),
            status=StepStatus(raw.get("status", "pending")),
            started_at=parse_iso(raw.get("started_at", "")),
            finished_at=parse_iso(raw.get("finished_at", "")),
            error=str(raw.get("error", "")),
            attempts=int(raw.get("attempts", 0)),
            message=str(raw.get("message", "")),
            log_id=int(raw.get("log_id", 0)),
        )


@dataclasses.dataclass
class FailoverJobState:
    """A failover job as the workflow sees it; rows are written from it (store.py)."""

    id: str
    vm_context_id: str
    kind: FailoverKind
    status: FailoverStatus = FailoverStatus.PENDING
    steps: list[FailoverStep] = dataclasses.field(default_factory=list)
    current_step: str = ""
    target_vm_id: str = ""
    target_vm_name: str = ""
    # CloudStack volume id → CloudStack snapshot id taken by this job
    snapshot_ids: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    error_reason: str = ""
    error_message: str = ""
    revision: int = 0
    request_id: str = ""
    claimed_by: str = ""
    created_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def cancel_requested(self) -> bool:
        """A cancel arrived while a step that cannot be stopped half-way ran: no further step starts."""
        return bool(self.params.get("cancel_requested"))

    @property
    def outcome(self) -> str:
        """What the job left behind, in words, once it ended."""
        return str(self.params.get("outcome", ""))

    def running_step(self) -> FailoverStep | None:
        return next((s for s in self.steps if s.status == StepStatus.RUNNING), None)

    def step(self, name: str) -> FailoverStep:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def next_step(self) -> FailoverStep | None:
        """The first step not done yet (a `running` one is resumed)."""
        return next((s for s in self.steps if s.status not in STEP_DONE), None)

    def copy(self) -> FailoverJobState:
        return dataclasses.replace(
            self,
            steps=[dataclasses.replace(s) for s in self.steps],
            snapshot_ids=dict(self.snapshot_ids),
            params=dict(self.params),
        )


def new_steps(kind: FailoverKind) -> list[FailoverStep]:
    return [FailoverStep(name) for name in STEPS[kind]]


def _refuse(job: FailoverJobState, what: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"failover job {job.id} is {job.status.value}; it cannot {what}",
        reason="ILLEGAL_FAILOVER_TRANSITION",
        job_id=job.id,
        status=job.status.value,
    )


def start_scheduled(job: FailoverJobState, claimed_by: str) -> None:
    """A scheduled cutover's time came: it becomes pending (its runner starts it)."""
    if job.status != FailoverStatus.SCHEDULED:
        raise _refuse(job, "start as scheduled")
    job.status = FailoverStatus.PENDING
    job.claimed_by = claimed_by


def start_job(job: FailoverJobState, claimed_by: str) -> None:
    if job.status not in (FailoverStatus.PENDING, FailoverStatus.RUNNING):
        raise _refuse(job, "start")
    job.status = FailoverStatus.RUNNING
    job.claimed_by = claimed_by


def start_step(job: FailoverJobState, name: str, now: datetime) -> FailoverStep:
    if job.status != FailoverStatus.RUNNING:
        raise _refuse(job, f"start step {name}")
    step = job.step(name)
    if step.status in STEP_DONE:
        raise _refuse(job, f"run step {name} again (it is {step.status.value})")
    step.status = StepStatus.RUNNING
    step.started_at = now
    step.finished_at = None
    step.error = ""
    step.attempts += 1
    job.current_step = name
    return step


def finish_step(job: FailoverJobState, name: str, now: datetime, *, skipped: bool = False, message: str = "") -> None:
    if job.status != FailoverStatus.RUNNING:
        raise _refuse(job, f"finish step {name}")
    step = job.step(name)
    if step.status != StepStatus.RUNNING:
        raise _refuse(job, f"finish step {name} (it is {step.status.value})")
    step.status = StepStatus.SKIPPED if skipped else StepStatus.COMPLETED
    step.finished_at = now
    step.message = message


def complete_job(job: FailoverJobState, now: datetime) -> None:
    if job.status != FailoverStatus.RUNNING or job.next_step() is not None:
        raise _refuse(job, "complete with steps left")
    job.status = FailoverStatus.COMPLETED
    job.current_step = ""
    job.finished_at = now


def fail_job(job: FailoverJobState, now: datetime, step_name: str, reason: str, message: str) -> None:
    """The step (if any) and the job fail together, with what the operator should do."""
    if job.final:
        raise _refuse(job, "fail")
    if step_name:
        step = job.step(step_name)
        step.status = StepStatus.FAILED
        step.finished_at = now
        step.error = message
    job.status = FailoverStatus.FAILED
    job.error_reason = reason
    job.error_message = message
    job.current_step = ""
    job.finished_at = now


def request_cancel(job: FailoverJobState) -> None:
    if job.final or job.status == FailoverStatus.SCHEDULED:  # a scheduled job is cancelled at once (cancel_job)
        raise _refuse(job, "be cancelled")
    job.params["cancel_requested"] = True


def cancel_job(job: FailoverJobState, now: datetime, outcome: str) -> None:
    """The job and its running step (if any) end cancelled, with what is left to undo."""
    if job.final:
        raise _refuse(job, "be cancelled")
    step = job.running_step()
    if step is not None:
        step.status = StepStatus.CANCELLED
        step.finished_at = now
        step.error = "cancelled by the operator"
    job.status = FailoverStatus.CANCELLED
    job.error_reason = "CANCELLED"
    job.error_message = outcome
    job.params["outcome"] = outcome
    job.current_step = ""
    job.finished_at = now
