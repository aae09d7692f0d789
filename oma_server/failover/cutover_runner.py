"""Scheduled cutovers in time: creating one, cancelling it before it starts, starting it at its time, and the
rollback a final-sync deadline missed with CANCEL asks for (timing and its rules: cutover.py).

Scheduling checks readiness now (a replication job running on the VM is no reason to refuse: the cutover waits for
it at its time) and creates the job `scheduled`, claiming nothing: the VM context stays free for replication. A pass
loop (PassLoop on the clock adapter, woken when a replication job ends) looks at every scheduled job:
- not due yet: it sleeps until the first start_at (a test's ManualClock moves it there in moments);
- due, and its final-sync deadline already passed (the OMA was down, the VM was busy): CANCEL ends it cancelled
  without touching anything, with an alert; WAIT notes it once and goes on;
- due while a job runs on the VM (a scheduled incremental): it waits, noted once, and looks again when that ends;
  so it does while its appliance is not connected (after an OMA restart, until the VMA dials in again) or
  CloudStack cannot be reached;
- due: readiness again (refused: the job fails, nothing touched, with the failed checks), then one transaction
  claims it — a conditional UPDATE of its row from `scheduled` (so of several OMA processes on one database exactly
  one starts it, and a cancel committed first wins) with the VM context's active job — and the runner runs it.
An OMA that was down at start_at does all this at its first pass after start. A cancel of a scheduled job takes the
same conditional claim: it ends `cancelled` at once, touching nothing, or finds the job started and cancels it as
any failover is cancelled.

After a final-sync deadline missed with CANCEL the runner ends the job cancelled (its final sync cancelled); once
the final sync has ended and the VM context is `cleanup_required`, a pass starts RollbackFailover, powering the
source back on when the failover powered it off (`rollback_pending` on the job makes that survive a restart).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from loguru import logger

from oma_server.db.models import FailoverJob, VmContext, utcnow
from oma_server.errors import DomainError, FailedPrecondition, job_already_active
from oma_server.failover import state_machine as sm
from oma_server.failover.cancellation import changed_anything
from oma_server.failover.cutover import (
    DEADLINE_MISSED,
    CutoverTiming,
    DeadlineAction,
    DeadlineMissed,
    missed_text,
    require_scheduled,
    scheduled_conflict,
    when,
)
from oma_server.failover.readiness import Readiness
from oma_server.failover.state_machine import FailoverJobState, FailoverKind, FailoverStatus
from oma_server.failover.store import InTx, Mutate, open_failover_of, row_to_state
from oma_server.joblog import note
from oma_server.pass_loop import PassLoop
from oma_server.replication.store import ReplicationJobStore
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm

if TYPE_CHECKING:
    from oma_server.failover.workflow import FailoverWorkflow

# Readiness checks that fail only because a replication job runs on the VM now: no reason to refuse a schedule.
_BUSY_CHECKS = frozenset({"vm_ready", "no_active_job", "replication_completed"})
# Checks whose failure at the start time passes by itself (an appliance reconnecting after an OMA restart, a CloudStack
# outage): the cutover waits for them, noted once, rather than failing (its final-sync deadline bounds the wait).
_TRANSIENT_CHECKS = frozenset({"appliance_connected", "cloudstack_reachable"})


def claim_scheduled_row(job_id: str) -> None:
    """Inside the transaction that moves a scheduled job: only if its row is still scheduled (PostgreSQL holds the
    row lock to the commit, so a second process's claim sees the first one's status and is refused)."""
    claimed = (
        FailoverJob.update(updated_at=utcnow())
        .where((FailoverJob.id == job_id) & (FailoverJob.status == FailoverStatus.SCHEDULED.value))
        .execute()
    )
    if not claimed:
        raise FailedPrecondition(f"failover job {job_id} is no longer scheduled", reason="NOT_SCHEDULED", job_id=job_id)


def _pending_rollbacks() -> list[FailoverJobState]:
    rows = FailoverJob.select().where(
        (FailoverJob.kind == FailoverKind.LIVE.value)
        & (FailoverJob.status == FailoverStatus.CANCELLED.value)
        & (FailoverJob.error_reason == DEADLINE_MISSED)
    )
    return [s for s in map(row_to_state, rows) if s.params.get("rollback_pending")]


class CutoverRunner:
    def __init__(self, workflow: FailoverWorkflow, replication_jobs: ReplicationJobStore, tick_s: float = 30.0) -> None:
        self.workflow = workflow
        self.db = workflow.db
        self.clock = workflow.clock
        self.store = workflow.store
        self.replication_jobs = replication_jobs
        self.tick_s = tick_s
        self.loop = PassLoop("cutover", self.clock, self.run_pass, tick_s)
        workflow.cutover = self

    # ---- life ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        # a replication job that ended: a VM a cutover waits for may be free, or a cancelled final sync over
        ended = self.replication_jobs.watch.subscribe(lambda c: c.job_kind == "replication" and c.final)
        self.loop.start(wake_on=ended)

    async def stop(self) -> None:
        await self.loop.stop()

    def wake(self) -> None:
        self.loop.wake()

    async def pass_after_now(self) -> None:
        """Wait for a pass that began after this call (a test, after moving its clock)."""
        await self.loop.pass_after_now()

    # ---- operator actions ------------------------------------------------------------------------------------
    async def schedule(
        self, vm_context_id: str, service_offering_id: str, request_id: str, timing: CutoverTiming
    ) -> FailoverJobState:
        """StartFailover with start_at: readiness now, then a `scheduled` job that claims nothing."""
        if (other := await self.db.run(open_failover_of, vm_context_id)) is not None:
            raise self._conflict(other)
        readiness = await self.workflow.check(vm_context_id, FailoverKind.LIVE, service_offering_id)
        vm = await self.db.run(VmContext.get_by_id, vm_context_id)
        busy = self._running_replication(vm_context_id)
        blocking = [c for c in readiness.failed if not (busy and c.name in _BUSY_CHECKS)]
        if blocking:
            raise Readiness(blocking, readiness.plan).refuse(vm.name, vm.id)
        plan = readiness.plan

        def free(job: FailoverJobState) -> None:
            other = open_failover_of(vm_context_id, excluding=job.id)
            if other is not None:
                raise self._conflict(other)
            later = f"; replication job {busy} runs now (it may finish, or the cutover waits for it)" if busy else ""
            note(job.id, "schedule", f"live failover of {vm.name} as {plan.target_vm_name} {timing.describe()}{later}")

        job = await self.store.create(
            vm_context_id,
            FailoverKind.LIVE,
            target_vm_name=plan.target_vm_name,
            params={**plan.to_params(), **timing.to_params()},
            request_id=request_id,
            in_tx=free,
            status=FailoverStatus.SCHEDULED,
        )
        logger.bind(job_id=job.id, vm_context_id=vm_context_id).info("live failover {what}", what=timing.describe())
        self.wake()
        return job

    @staticmethod
    def _conflict(other: FailoverJobState) -> FailedPrecondition:
        if other.status == FailoverStatus.SCHEDULED:
            return scheduled_conflict(other)
        return job_already_active(
            f"VM context {other.vm_context_id} has an active {other.kind.value} job {other.id}; wait for it", other.id
        )

    async def cancel_scheduled(self, job_id: str) -> FailoverJobState | None:
        """End a scheduled job cancelled, touching nothing; None when it is no longer scheduled (it started)."""
        now = self.clock.now()

        def cancel(state: FailoverJobState) -> None:
            sm.cancel_job(
                state, now, "cancelled before its scheduled start; nothing was changed, the VM context is as before"
            )

        try:
            job = await self._commit_scheduled(job_id, cancel, "cancel", "cancelled by the operator before its start")
        except FailedPrecondition as exc:
            if exc.reason == "NOT_SCHEDULED":
                return None
            raise
        logger.bind(job_id=job_id, vm_context_id=job.vm_context_id).info("scheduled live failover cancelled")
        return job

    async def _commit_scheduled(
        self, job_id: str, mutate: Mutate, step: str, message: str, in_tx: InTx | None = None
    ) -> FailoverJobState:
        """A change of a job that is still scheduled (refused NOT_SCHEDULED otherwise), with a job-log note."""

        def change(state: FailoverJobState) -> None:
            require_scheduled(state)
            mutate(state)

        def write(state: FailoverJobState) -> None:
            claim_scheduled_row(state.id)
            if in_tx is not None:
                in_tx(state)
            note(state.id, step, message)

        return await self.store.commit(job_id, change, write)

    # ---- passes ----------------------------------------------------------------------------------------------
    async def run_pass(self) -> float:
        """Start (or cancel, or fail) every due scheduled job; start the rollbacks missed deadlines asked for; the
        seconds until the next start_at."""
        now = self.clock.now()
        upcoming: list[datetime] = []
        for job in await self.store.scheduled_jobs():
            timing = CutoverTiming.of(job.params)
            if timing.start_at is not None and timing.start_at > now:
                upcoming.append(timing.start_at)
                continue
            try:
                await self._due(job, timing, now)
            except DomainError as exc:  # it moved meanwhile (a cancel, another OMA): the next pass looks again
                logger.bind(job_id=job.id).info("scheduled job left for the next pass: {e}", e=exc.message)
        await self._rollbacks()
        if not upcoming:
            return self.tick_s
        return max(0.0, min(self.tick_s, (min(upcoming) - now).total_seconds()))

    def _running_replication(self, vm_context_id: str) -> str:
        return next((j.id for j in self.replication_jobs.open_jobs() if j.vm_context_id == vm_context_id), "")

    async def _due(self, job: FailoverJobState, timing: CutoverTiming, now: datetime) -> None:
        log = logger.bind(job_id=job.id, vm_context_id=job.vm_context_id)
        deadline = timing.final_sync_deadline
        if deadline is not None and now >= deadline and not job.params.get("deadline_missed"):
            text = missed_text(deadline, f"before the scheduled start ({when(timing.start_at)}) could begin")
            if timing.action == DeadlineAction.CANCEL:
                await self._cancel_unstarted(job, now, text)
                return
            log.warning("final-sync deadline missed: {text}; starting anyway (on_deadline_missed wait)", text=text)
            job = await self._commit_scheduled(
                job.id, _mark_missed, "schedule", f"{text}; on_deadline_missed is wait: starting anyway"
            )
        vm = await self.db.run(VmContext.get_by_id, job.vm_context_id)
        busy = self._running_replication(job.vm_context_id) or vm.active_job_id
        if busy:
            await self._wait(job, busy, f"start time {when(timing.start_at)} came while job {busy} runs on the VM")
            return
        readiness = await self.workflow.readiness.check(
            job.vm_context_id,
            FailoverKind.LIVE,
            service_offering_id=str(job.params.get("service_offering_id", "")),
            own_job_id=job.id,
            target_name=job.target_vm_name,
        )
        if readiness.failed and all(c.name in _TRANSIENT_CHECKS for c in readiness.failed):
            why = "; ".join(c.reason for c in readiness.failed)
            await self._wait(job, ",".join(c.name for c in readiness.failed), f"start time came but {why}")
            return
        if not readiness.ready:
            await self._fail_unstarted(job, now, readiness, vm.name)
            return
        await self._claim(job, timing, readiness)
        log.info("scheduled live failover starts (it was due at {at})", at=when(timing.start_at))
        self.workflow.resume_job(job.id)

    async def _wait(self, job: FailoverJobState, cause: str, message: str) -> None:
        """The job stays scheduled until `cause` passes; noted once per cause."""
        if job.params.get("waiting_for") == cause:
            return

        def waiting(state: FailoverJobState) -> None:
            state.params["waiting_for"] = cause

        logger.bind(job_id=job.id, vm_context_id=job.vm_context_id).info("{m}; waiting", m=message)
        await self._commit_scheduled(job.id, waiting, "schedule", f"{message}; waiting")

    async def _claim(self, job: FailoverJobState, timing: CutoverTiming, readiness: Readiness) -> FailoverJobState:
        process_id = self.workflow.process_id

        def start(state: FailoverJobState) -> None:
            sm.start_scheduled(state, process_id)
            state.params.update(readiness.plan.to_params())  # the plan as of now (mappings may have changed)
            state.params.pop("waiting_for", None)

        def claim_vm(state: FailoverJobState) -> None:
            current = VmContext.get_by_id(state.vm_context_id)
            if current.active_job_id:
                raise job_already_active(
                    f"VM {current.name} has an active job {current.active_job_id}", current.active_job_id
                )
            transition_vm(state.vm_context_id, VmStatus.READY_FOR_FAILOVER, active_job_id=state.id)

        message = f"scheduled start {when(timing.start_at)}: {len(readiness.checks)} readiness checks passed; starting"
        return await self._commit_scheduled(job.id, start, "start", message, claim_vm)

    async def _cancel_unstarted(self, job: FailoverJobState, now: datetime, text: str) -> None:
        outcome = (
            f"not started: {text}; on_deadline_missed is cancel — nothing was changed, the VM context is as before"
        )

        def cancel(state: FailoverJobState) -> None:
            sm.cancel_job(state, now, outcome)
            state.error_reason = DEADLINE_MISSED
            _mark_missed(state)

        await self._commit_scheduled(job.id, cancel, "cancel", f"ALERT: {outcome}")
        logger.bind(job_id=job.id, vm_context_id=job.vm_context_id, reason=DEADLINE_MISSED).warning(
            "scheduled live failover cancelled: {o}", o=outcome
        )

    async def _fail_unstarted(self, job: FailoverJobState, now: datetime, readiness: Readiness, vm_name: str) -> None:
        refusal = readiness.refuse(vm_name, job.vm_context_id)
        message = f"not started at its scheduled time: {refusal.message}; nothing was changed"

        def fail(state: FailoverJobState) -> None:
            sm.fail_job(state, now, "", refusal.reason, message)
            state.params["outcome"] = message

        await self._commit_scheduled(job.id, fail, "start", message)
        logger.bind(job_id=job.id, vm_context_id=job.vm_context_id, reason=refusal.reason).warning(message)

    # ---- a deadline missed with CANCEL after the start ----------------------------------------------------------
    def deadline_error(self, exc: DeadlineMissed) -> Mutate:
        """What the cancel of a job whose final sync missed its deadline records (the workflow commits it)."""

        def why(state: FailoverJobState) -> None:
            _mark_missed(state)
            rollback = changed_anything(state)
            state.params["rollback_pending"] = rollback
            then = "nothing was changed"
            if rollback:
                then = "a rollback starts by itself once the final sync has stopped" + (
                    ", powering the source VM back on" if state.params.get("source_powered_off") else ""
                )
            state.error_reason = DEADLINE_MISSED
            state.error_message = state.params["outcome"] = f"cancelled: {exc.message}; {then}"

        return why

    async def deadline_cancelled(self, job: FailoverJobState) -> None:
        """After the cancel's commit: the alert, and the rollback as soon as it can start."""
        if job.status != FailoverStatus.CANCELLED:
            return  # it ended on its own first
        logger.bind(job_id=job.id, vm_context_id=job.vm_context_id, reason=DEADLINE_MISSED).warning(
            "live failover cancelled: {m}", m=job.error_message
        )
        await self.db.tx(note, job.id, "cancel", f"ALERT: {job.error_message}")
        self.wake()

    async def _rollbacks(self) -> None:
        for job in await self.db.run(_pending_rollbacks):
            vm = await self.db.run(VmContext.get_or_none, VmContext.id == job.vm_context_id)
            if vm is None or vm.active_job_id or VmStatus(vm.status) != VmStatus.CLEANUP_REQUIRED:
                continue  # the final sync has not stopped yet (the VM context is its): a later pass
            await self.store.commit(job.id, _rollback_taken)
            power_on = bool(job.params.get("source_powered_off"))
            try:
                rollback = await self.workflow.rollback(job.vm_context_id, power_on_source=power_on)
            except DomainError as exc:
                message = f"the rollback after the missed deadline could not start: {exc.message}; run RollbackFailover"
                logger.bind(job_id=job.id, vm_context_id=job.vm_context_id).warning(message)
                await self.db.tx(note, job.id, "rollback", message, "failed")
                continue
            message = f"rollback job {rollback.id} started (power_on_source={power_on})"
            logger.bind(job_id=job.id, vm_context_id=job.vm_context_id).info(message)
            await self.db.tx(note, job.id, "rollback", message)


def _mark_missed(state: FailoverJobState) -> None:
    state.params["deadline_missed"] = True


def _rollback_taken(state: FailoverJobState) -> None:
    state.params["rollback_pending"] = False
