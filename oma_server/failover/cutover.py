"""Scheduled cutover: when a live failover starts, by when its final sync must have completed, and what happens when
it has not (the job's params hold all three; no column of its own).

- `start_at`: the job is created `scheduled` (nothing claimed: the VM context keeps replicating, by schedules too)
  and becomes `pending` at that time (cutover_runner.py). At most `START_AT_GRACE_S` in the past (clock skew).
- `final_sync_deadline`: the final sync must have completed by then. Checked when the job's time comes (an OMA that
  was down past it) and while the final sync runs (forward_steps.final_sync).
- `on_deadline_missed`: WAIT keeps going (a job-log entry and a warning, once); CANCEL cancels the job and alerts (a
  warning, a job-log entry, the job's error FINAL_SYNC_DEADLINE_MISSED naming the deadline): before the start
  nothing was touched; after it, the final sync is cancelled and a rollback starts by itself (powering the source
  back on when the failover powered it off).

Everything here is pure or runs inside a transaction; the API layer turns Timestamps into naive-UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from oma_server.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from oma_server.failover.state_machine import FailoverJobState, FailoverKind, FailoverStatus, iso_text, parse_iso

START_AT_GRACE_S = 60.0
DEADLINE_MISSED = "FINAL_SYNC_DEADLINE_MISSED"


class DeadlineAction(StrEnum):
    WAIT = "wait"
    CANCEL = "cancel"


def when(value: datetime | None) -> str:
    """A naive-UTC time as operators read it: 2026-12-05 02:00:00 UTC."""
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value else "-"


@dataclass(frozen=True)
class CutoverTiming:
    """When a live failover starts and by when its final sync must be done (times naive UTC)."""

    start_at: datetime | None = None
    final_sync_deadline: datetime | None = None
    on_deadline_missed: DeadlineAction | None = None  # None: not given (WAIT when there is a deadline)

    @property
    def scheduled(self) -> bool:
        return self.start_at is not None

    @property
    def action(self) -> DeadlineAction:
        return self.on_deadline_missed or DeadlineAction.WAIT

    def to_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.start_at is not None:
            out["start_at"] = iso_text(self.start_at)
        if self.final_sync_deadline is not None:
            out["final_sync_deadline"] = iso_text(self.final_sync_deadline)
            out["on_deadline_missed"] = self.action.value
        return out

    @classmethod
    def of(cls, params: dict[str, Any]) -> CutoverTiming:
        action = params.get("on_deadline_missed")
        return cls(
            start_at=parse_iso(params.get("start_at")),
            final_sync_deadline=parse_iso(params.get("final_sync_deadline")),
            on_deadline_missed=DeadlineAction(action) if action else None,
        )

    def describe(self) -> str:
        parts = [f"scheduled for {when(self.start_at)}"] if self.start_at else []
        if self.final_sync_deadline:
            parts.append(f"final sync due by {when(self.final_sync_deadline)} (if missed: {self.action.value})")
        return ", ".join(parts)


def check_timing(kind: FailoverKind, timing: CutoverTiming, now: datetime) -> None:
    """INVALID_ARGUMENT naming the field for a timing that cannot be honoured (before anything is applied)."""
    given = timing.start_at is not None or timing.final_sync_deadline is not None
    if given and kind != FailoverKind.LIVE:
        field = "start_at" if timing.start_at is not None else "final_sync_deadline"
        raise InvalidArgument(
            f"{field} applies to live failovers only (a test failover starts at once and has no final sync)",
            reason="SCHEDULE_LIVE_ONLY",
            field=field,
        )
    if timing.on_deadline_missed is not None and timing.final_sync_deadline is None:
        raise InvalidArgument(
            "on_deadline_missed needs final_sync_deadline (by when the final sync must have completed)",
            reason="FINAL_SYNC_DEADLINE_MISSING",
            field="final_sync_deadline",
        )
    if timing.start_at is not None and timing.start_at < now - timedelta(seconds=START_AT_GRACE_S):
        raise InvalidArgument(
            f"start_at {when(timing.start_at)} is in the past (now {when(now)}); give a future time, or leave it "
            "unset to start now",
            reason="START_AT_IN_PAST",
            field="start_at",
        )
    deadline = timing.final_sync_deadline
    if deadline is None:
        return
    if timing.start_at is not None and deadline <= timing.start_at:
        raise InvalidArgument(
            f"final_sync_deadline {when(deadline)} is not after start_at {when(timing.start_at)}",
            reason="FINAL_SYNC_DEADLINE_BEFORE_START",
            field="final_sync_deadline",
        )
    if deadline <= now:
        raise InvalidArgument(
            f"final_sync_deadline {when(deadline)} is in the past (now {when(now)})",
            reason="FINAL_SYNC_DEADLINE_IN_PAST",
            field="final_sync_deadline",
        )


class DeadlineMissed(DeadlineExceeded):
    """The final sync missed its deadline and the job says CANCEL: the runner cancels the job (not a failure)."""

    default_reason = DEADLINE_MISSED


def missed_text(deadline: datetime, what: str) -> str:
    return f"the final-sync deadline {when(deadline)} passed {what}"


def scheduled_conflict(job: FailoverJobState) -> FailedPrecondition:
    """What refuses another failover, cleanup or power job while a cutover is scheduled for the VM."""
    timing = CutoverTiming.of(job.params)
    return FailedPrecondition(
        f"VM context {job.vm_context_id} has live failover {job.id} {timing.describe()}; cancel it first "
        f"(CancelJob {job.id}) or wait for it",
        reason="CUTOVER_SCHEDULED",
        job_id=job.id,
        vm_context_id=job.vm_context_id,
    )


def require_scheduled(job: FailoverJobState) -> None:
    """Inside a claim: the job is still scheduled (another OMA process, a cancel or a start did not come first)."""
    if job.status != FailoverStatus.SCHEDULED:
        raise FailedPrecondition(
            f"failover job {job.id} is {job.status.value}, no longer scheduled",
            reason="NOT_SCHEDULED",
            job_id=job.id,
            status=job.status.value,
        )


class Cutovers(Protocol):
    """What the failover workflow asks of the scheduled-cutover runner (cutover_runner.CutoverRunner)."""

    async def schedule(
        self, vm_context_id: str, service_offering_id: str, request_id: str, timing: CutoverTiming
    ) -> FailoverJobState: ...

    async def cancel_scheduled(self, job_id: str) -> FailoverJobState | None: ...

    def deadline_error(self, exc: DeadlineMissed) -> Callable[[FailoverJobState], None]: ...

    async def deadline_cancelled(self, job: FailoverJobState) -> None: ...
