"""The failover runner: starts test/live failovers, cleanups and rollbacks, runs their step lists, resumes them.

Each job is a step list (state_machine.STEPS). The runner takes the first step not done, marks it running (with a
job-log entry) in one transaction, runs it (steps.py; idempotent), and marks it completed or skipped — together with
what the step learned and, for the last step, the VM context's new status — in one transaction. A failure fails the
step and the job and leaves the VM context `cleanup_required`, with a message naming what failed and what to do;
CleanupFailover (or RollbackFailover after a live failover) undoes it in one call. After an OMA restart, `resume`
continues every pending or running job from its current step.

VM context while a job runs: it keeps its status (ready_for_failover, failed_over_test, ...) with active_job_id set
to the job, so replication and other failovers are refused. A live failover hands the VM context to its final sync
(replicating) and takes it back when the sync completes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from oma_server import metrics
from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import VmContext
from oma_server.engine import JobRunner, OnRetry, run_step
from oma_server.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    job_already_active,
)
from oma_server.failover import state_machine as sm
from oma_server.failover.cancellation import (
    check_cancellable,
    outcome_of_cancel,
    outcome_of_completion,
    record_cancel,
    stops_at_once,
)
from oma_server.failover.cutover import Cutovers, CutoverTiming, DeadlineMissed, check_timing, scheduled_conflict
from oma_server.failover.endings import failure_message, keep_status
from oma_server.failover.readiness import Readiness, ReadinessChecker
from oma_server.failover.state_machine import FailoverJobState, FailoverKind, StepStatus
from oma_server.failover.steps import FailoverSteps, StepContext, StepResult
from oma_server.failover.store import (
    FailoverJobStore,
    InTx,
    Mutate,
    latest_failover_of,
    load,
    open_failover_of,
    scheduled_of,
)
from oma_server.joblog import begin_step, end_step, note
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm


class FailoverWorkflow:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        store: FailoverJobStore,
        readiness: ReadinessChecker,
        steps: FailoverSteps,
        process_id: str,
        *,
        cancel_replication: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        """`cancel_replication` cancels a replication job (a live failover's final sync, when the failover is
        cancelled)."""
        self.db = db
        self.clock = clock
        self.store = store
        self.readiness = readiness
        self.steps = steps
        self.process_id = process_id
        self.runner = JobRunner("failover")
        self._cancelling: set[str] = set()  # jobs whose task a cancel is stopping: not to be resumed meanwhile
        # test hook: called with (job id, step name) before a step runs
        self.before_step: Callable[[str, str], None] | None = None
        self.cancel_replication = cancel_replication
        #: scheduled cutovers (cutover_runner.py); set when it is built
        self.cutover: Cutovers | None = None
        #: per kind, what to tidy after a job of it failed or was cancelled (failover/at_rest.py)
        self.on_unfinished: dict[FailoverKind, Callable[[FailoverJobState], Awaitable[None]]] = {}

    # ---- operator actions ---------------------------------------------------------------------------------------
    async def check(self, vm_context_id: str, kind: FailoverKind, service_offering_id: str = "") -> Readiness:
        if kind not in (FailoverKind.TEST, FailoverKind.LIVE):
            raise InvalidArgument("kind must be TEST or LIVE", reason="FAILOVER_KIND_INVALID")
        return await self.readiness.check(vm_context_id, kind, service_offering_id=service_offering_id)

    async def start_failover(
        self,
        vm_context_id: str,
        kind: FailoverKind,
        service_offering_id: str = "",
        request_id: str = "",
        timing: CutoverTiming | None = None,
    ) -> FailoverJobState:
        """Start a failover now, or (a live one with `timing.start_at`) schedule it: cutover_runner.py."""
        timing = timing or CutoverTiming()
        check_timing(kind, timing, self.clock.now())
        if timing.scheduled:
            assert self.cutover is not None, "a scheduled cutover needs the CutoverRunner (app.py builds it)"
            return await self.cutover.schedule(vm_context_id, service_offering_id, request_id, timing)
        scheduled = await self.db.run(scheduled_of, vm_context_id)
        if scheduled is not None:
            raise scheduled_conflict(scheduled)
        readiness = await self.check(vm_context_id, kind, service_offering_id)
        vm = await self._vm(vm_context_id)
        if not readiness.ready:
            raise readiness.refuse(vm.name, vm.id)
        plan = readiness.plan

        def claim_vm(job: FailoverJobState) -> None:
            current = VmContext.get_by_id(vm_context_id)
            if current.active_job_id:
                raise job_already_active(
                    f"VM {current.name} has an active job {current.active_job_id}; wait for it", current.active_job_id
                )
            if (other := scheduled_of(vm_context_id)) is not None:
                raise scheduled_conflict(other)
            transition_vm(vm_context_id, VmStatus.READY_FOR_FAILOVER, active_job_id=job.id)
            note(job.id, "start", f"{kind.value} failover of {current.name} as {plan.target_vm_name} requested")

        job = await self.store.create(
            vm_context_id,
            kind,
            target_vm_name=plan.target_vm_name,
            params={**plan.to_params(), **timing.to_params()},
            request_id=request_id,
            in_tx=claim_vm,
        )
        logger.bind(job_id=job.id, vm_context_id=vm_context_id).info("{kind} failover started", kind=kind.value)
        self._spawn(job.id)
        return job

    async def cleanup(self, vm_context_id: str, request_id: str = "") -> FailoverJobState:
        """Undo a test failover, or any failed failover (VM context failed_over_test or cleanup_required)."""
        return await self._undo(vm_context_id, FailoverKind.CLEANUP, power_on_source=False, request_id=request_id)

    async def rollback(self, vm_context_id: str, power_on_source: bool) -> FailoverJobState:
        """Undo a live failover (VM context failed_over_live, or cleanup_required after a live failover)."""
        return await self._undo(vm_context_id, FailoverKind.ROLLBACK, power_on_source=power_on_source)

    async def _undo(
        self, vm_context_id: str, kind: FailoverKind, *, power_on_source: bool, request_id: str = ""
    ) -> FailoverJobState:
        vm = await self._vm(vm_context_id)
        source = await self.db.run(latest_failover_of, vm_context_id)
        status = VmStatus(vm.status)
        if kind == FailoverKind.CLEANUP:
            allowed = status in (VmStatus.FAILED_OVER_TEST, VmStatus.CLEANUP_REQUIRED)
            hint = "RollbackFailover undoes a live failover" if status == VmStatus.FAILED_OVER_LIVE else ""
        else:
            allowed = status == VmStatus.FAILED_OVER_LIVE or (
                status == VmStatus.CLEANUP_REQUIRED and source is not None and source.kind == FailoverKind.LIVE
            )
            hint = "CleanupFailover undoes a test failover" if status == VmStatus.FAILED_OVER_TEST else ""
        if not allowed:
            raise FailedPrecondition(
                f"VM {vm.name} is {status.value}; there is nothing for {kind.value} to undo"
                + (f" ({hint})" if hint else ""),
                reason="NOTHING_TO_UNDO",
                vm_context_id=vm_context_id,
                status=status.value,
            )
        source_id = source.id if source else ""

        def claim_vm(job: FailoverJobState) -> None:
            current = VmContext.get_by_id(vm_context_id)
            running = open_failover_of(vm_context_id)
            if current.active_job_id or (running is not None and running.id != job.id):
                active = current.active_job_id or (running.id if running else "")
                raise job_already_active(f"VM {current.name} has an active job {active}; wait for it", active)
            transition_vm(vm_context_id, VmStatus(current.status), active_job_id=job.id)
            note(job.id, "start", f"{kind.value} of failover {source_id or '(none)'} of {current.name} requested")

        job = await self.store.create(
            vm_context_id,
            kind,
            target_vm_name=source.target_vm_name if source else "",
            params={
                "of_job_id": source_id,
                "power_on_source": power_on_source,
                "replicas_dirty": bool(source and source.params.get("replicas_dirty")),
            },
            request_id=request_id,
            in_tx=claim_vm,
        )
        logger.bind(job_id=job.id, vm_context_id=vm_context_id).info("{kind} started", kind=kind.value)
        self._spawn(job.id)
        return job

    async def _vm(self, vm_context_id: str) -> VmContext:
        if not vm_context_id:
            raise InvalidArgument("vm_context_id is required", reason="VM_CONTEXT_ID_MISSING")
        vm = await self.db.run(VmContext.get_or_none, VmContext.id == vm_context_id)
        if vm is None:
            raise NotFound(
                f"VM context {vm_context_id} does not exist", reason="VM_CONTEXT_NOT_FOUND", vm_context_id=vm_context_id
            )
        return vm

    async def cancel(self, job_id: str) -> FailoverJobState:
        """Stop a job now when that is safe, else when its current step ends (state_machine's docstring); a repeat
        returns the job as it is."""
        job = await self.store.get(job_id)
        if job.status == sm.FailoverStatus.SCHEDULED and self.cutover is not None:
            ended = await self.cutover.cancel_scheduled(job_id)  # at once, touching nothing
            if ended is not None:
                return ended
            job = await self.store.get(job_id)  # it started meanwhile: cancelled like any other
        if job.status == sm.FailoverStatus.CANCELLED or (not job.final and job.cancel_requested):
            return job
        runs_here = self.running(job_id)
        at_once: list[bool] = []

        def decide(state: FailoverJobState) -> None:
            # Decided on the row inside the commit that records the request: the runner cannot begin another step
            # between the decision and the stop (its next commit waits for this one, and the stop follows at once).
            check_cancellable(state)
            at_once.append(stops_at_once(state, runs_here))
            sm.request_cancel(state)

        def log_request(state: FailoverJobState) -> None:
            later = "" if at_once[0] else f"; the job stops when step {state.current_step} ends"
            note(state.id, "cancel", f"cancel requested by the operator{later}")

        job = await self._commit(job_id, decide, log_request)
        if not at_once[0]:
            logger.bind(job_id=job_id, vm_context_id=job.vm_context_id).info(
                "cancel requested during step {step}; the job stops when it ends", step=job.current_step
            )
            return job
        self._cancelling.add(job_id)
        try:
            if self.runner.cancel(job_id):  # the unit of work it is in finishes first (uninterruptible)
                await self.runner.wait(job_id)
            return await self._end_cancelled(job_id)
        finally:
            self._cancelling.discard(job_id)

    async def _end_cancelled(self, job_id: str, why: Mutate | None = None) -> FailoverJobState:
        """End the job cancelled (its final sync cancelled first); `why` adds to the cancel's state (a missed
        deadline's error)."""
        job = await self.store.get(job_id)
        if job.final:
            return job  # it ended on its own before the cancel took hold
        sync_id = str(job.params.get("final_sync_job_id", ""))
        if sync_id and self.cancel_replication is not None:
            await self._stop_final_sync(job, sync_id)
            job = await self.store.get(job_id)
        now = self.clock.now()
        outcome = outcome_of_cancel(job)

        def end(state: FailoverJobState) -> None:
            sm.cancel_job(state, now, outcome)
            if why is not None:
                why(state)

        cancelled = await self._commit(job_id, end, record_cancel)
        await self._after_unfinished(job_id)
        logger.bind(job_id=job_id, vm_context_id=job.vm_context_id).info(
            "{kind} job cancelled: {o}", kind=job.kind.value, o=outcome
        )
        return cancelled

    async def _stop_final_sync(self, job: FailoverJobState, sync_id: str) -> None:
        """A cancelled live failover cancels its final sync; one that already copied leaves the replicas between two
        change ids (the next replication repairs them)."""
        assert self.cancel_replication is not None
        with contextlib.suppress(DomainError):  # it ended meanwhile: nothing to cancel
            sync = await self.cancel_replication(sync_id)
            if getattr(sync, "started_at", None) is not None:

                def dirty(state: FailoverJobState) -> None:
                    state.params["replicas_dirty"] = True

                await self._commit(job.id, dirty, lambda s: note(s.id, "cancel", f"final sync {sync_id} cancelled"))

    # ---- running ------------------------------------------------------------------------------------------------
    def _spawn(self, job_id: str) -> None:
        if job_id not in self._cancelling:
            self.runner.start(job_id, lambda: self._run(job_id))

    def running(self, job_id: str) -> bool:
        """Whether this process runs the job's steps right now."""
        return self.runner.running(job_id)

    def resume_job(self, job_id: str) -> None:
        """Continue a pending or running job from its current step."""
        self._spawn(job_id)

    async def resume(self) -> list[str]:
        """At start: every pending or running failover job continues from its current step."""
        resumed = []
        for job in await self.store.open_jobs():
            logger.bind(job_id=job.id, vm_context_id=job.vm_context_id).info(
                "resuming {kind} job at step {step} after a restart", kind=job.kind.value, step=job.current_step or "-"
            )
            await self.db.tx(
                note, job.id, job.current_step or "resume", f"OMA restarted; resuming (was claimed by {job.claimed_by})"
            )
            self._spawn(job.id)
            resumed.append(job.id)
        return resumed

    async def stop(self) -> None:
        await self.runner.stop()

    async def wait(self, job_id: str, timeout_s: float = 60.0) -> FailoverJobState:
        """Wait until the job's runner ends (tests and the demo); returns the job."""
        await self.runner.wait(job_id, timeout_s)
        return await self.store.get(job_id)

    async def _commit(self, job_id: str, mutate: Mutate, in_tx: InTx | None = None) -> FailoverJobState:
        return await self.store.commit(job_id, mutate, in_tx)

    async def _run(self, job_id: str) -> None:
        log = logger.bind(job_id=job_id)
        job = await self.store.get(job_id)
        log = log.bind(vm_context_id=job.vm_context_id)
        if job.final:
            return
        job = await self._commit(job_id, lambda s: sm.start_job(s, self.process_id))
        source = None
        if job.kind in (FailoverKind.CLEANUP, FailoverKind.ROLLBACK) and job.params.get("of_job_id"):
            source = await self.db.run(load, str(job.params["of_job_id"]))
        step_name = ""
        try:
            while (step := job.next_step()) is not None:
                if job.cancel_requested:  # asked while the previous step could not be stopped
                    await self._end_cancelled(job_id)
                    return
                step_name = step.name
                if self.before_step is not None:
                    self.before_step(job_id, step_name)
                job = await self._begin(job, step_name)
                log.info("step {step} (attempt {n})", step=step_name, n=job.step(step_name).attempts)

                async def record(mutate: Mutate, in_tx: InTx | None = None) -> FailoverJobState:
                    return await self._commit(job_id, mutate, in_tx)

                ctx = StepContext(job=job, record=record, source=source, log=log.bind(step=step_name))
                with metrics.failover_step(job.kind.value, step_name):
                    result = await run_step(self.steps.step(step_name), ctx, self._retrying(job_id, step_name))
                job = await self._finish(ctx.job, step_name, result)
                step_name = ""
            await self._complete(job)
            log.info("{kind} job completed", kind=job.kind.value)
        except asyncio.CancelledError:
            log.info(
                "{kind} job interrupted at step {step}; it resumes at the next start",
                kind=job.kind.value,
                step=step_name or "-",
            )
            raise
        except DeadlineMissed as exc:
            assert self.cutover is not None
            await self.cutover.deadline_cancelled(await self._end_cancelled(job_id, self.cutover.deadline_error(exc)))
        except DomainError as exc:
            await self._fail(job_id, step_name, exc.reason, exc.message)
        except Exception as exc:
            log.opt(exception=True).error("failover step {step} failed unexpectedly", step=step_name)
            await self._fail(job_id, step_name, "INTERNAL", f"{type(exc).__name__}: {exc}")

    def _retrying(self, job_id: str, step: str) -> OnRetry:
        async def note_retry(attempt: int, error: BaseException, delay: float) -> None:
            what = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
            logger.bind(job_id=job_id, step=step).warning(
                "step {step} attempt {n} failed, retrying", step=step, n=attempt
            )
            await self.db.tx(note, job_id, step, f"attempt {attempt} failed ({what}); trying again in {delay:.0f}s")

        return note_retry

    async def _begin(self, job: FailoverJobState, name: str) -> FailoverJobState:
        now = self.clock.now()

        def mutate(state: FailoverJobState) -> None:
            sm.start_step(state, name, now)

        interrupted = job.step(name).log_id if job.step(name).status == StepStatus.RUNNING else 0

        def log_entry(state: FailoverJobState) -> None:
            step = state.step(name)
            if interrupted:  # the attempt an OMA restart cut short
                end_step(interrupted, "failed", "interrupted by an OMA restart; the step runs again")
            step.log_id = begin_step(state.id, name, f"attempt {step.attempts}")

        return await self._commit(job.id, mutate, log_entry)

    async def _finish(self, job: FailoverJobState, name: str, result: StepResult) -> FailoverJobState:
        now = self.clock.now()

        def mutate(state: FailoverJobState) -> None:
            if result.mutate is not None:
                result.mutate(state)
            sm.finish_step(state, name, now, skipped=result.skipped, message=result.message)

        def in_tx(state: FailoverJobState) -> None:
            step = state.step(name)
            end_step(step.log_id, "skipped" if step.status == StepStatus.SKIPPED else "completed", result.message)
            if result.in_tx is not None:
                result.in_tx(state)

        return await self._commit(job.id, mutate, in_tx)

    async def _complete(self, job: FailoverJobState) -> None:
        now = self.clock.now()
        done = {
            FailoverKind.TEST: VmStatus.FAILED_OVER_TEST,
            FailoverKind.LIVE: VmStatus.FAILED_OVER_LIVE,
        }.get(job.kind)

        def in_tx(state: FailoverJobState) -> None:
            state.params["outcome"] = outcome_of_completion(state)
            if state.kind in sm.POWER:  # the VM context was never claimed: its status is not the power job's
                note(state.id, "complete", state.outcome)
                return
            if state.kind in sm.KEEPS_STATUS:
                keep_status(state, "complete")
                return
            if done is not None:
                transition_vm(state.vm_context_id, done, active_job_id="")
                note(state.id, "complete", f"VM context is {done.value}; target VM {state.target_vm_name}")
                return
            # Cleanup/rollback: back to ready_for_failover, or failed when an interrupted final sync left the
            # replicas between two change ids (the next incremental replication repairs them).
            back = VmStatus.FAILED if state.params.get("replicas_dirty") else VmStatus.READY_FOR_FAILOVER
            transition_vm(state.vm_context_id, back, active_job_id="")
            extra = "" if back == VmStatus.READY_FOR_FAILOVER else "; the final sync was interrupted: replicate again"
            if extra:
                state.params["outcome"] += extra
            note(state.id, "complete", f"VM context is {back.value}{extra}; {state.outcome}")

        await self._commit(job.id, lambda s: sm.complete_job(s, now), in_tx)

    async def _fail(self, job_id: str, step_name: str, reason: str, error: str) -> None:
        now = self.clock.now()
        current = await self.store.get(job_id)
        if current.final:
            return
        hint = self.steps.step(step_name).hint if step_name else "see the job log"
        message = failure_message(current.kind, step_name or "start", error, hint)
        if current.kind == FailoverKind.LIVE and current.params.get("source_powered_off"):
            message += " The source VM is powered off."
        # a verification's reason is its finding (REPLICA_MISMATCH), not the step it was reported in
        step_reason = f"{step_name.upper()}_FAILED" if step_name and current.kind not in sm.KEEPS_STATUS else reason

        def mutate(state: FailoverJobState) -> None:
            sm.fail_job(state, now, step_name, step_reason, message)

        def in_tx(state: FailoverJobState) -> None:
            if step_name:
                step = state.step(step_name)
                if step.log_id:
                    end_step(step.log_id, "failed", message)
            state.params["outcome"] = message
            if state.kind in sm.POWER:  # the VM context was never claimed
                return
            if state.kind in sm.KEEPS_STATUS:
                keep_status(state, "fail")
                return
            vm = VmContext.get_by_id(state.vm_context_id)
            src = VmStatus(vm.status)
            if src == VmStatus.REPLICATING:
                # the final sync still runs: the VM context is its; cleanup is possible once it ends
                note(state.id, "fail", "VM context left replicating: its final sync is still running")
                return
            active = "" if vm.active_job_id in ("", state.id) else None
            try:
                transition_vm(state.vm_context_id, VmStatus.CLEANUP_REQUIRED, active_job_id=active)
            except FailedPrecondition:
                transition_vm(state.vm_context_id, src, active_job_id=active)
                note(state.id, "fail", f"VM context left {src.value}")

        await self._commit(job_id, mutate, in_tx)
        logger.bind(job_id=job_id, reason=step_reason).warning("failover job failed: {m}", m=message)
        await self._after_unfinished(job_id)

    async def _after_unfinished(self, job_id: str) -> None:
        """A job that failed or was cancelled: what its kind leaves to tidy (a verification's replicas)."""
        job = await self.store.get(job_id)
        tidy = self.on_unfinished.get(job.kind)
        if tidy is not None:
            await tidy(job)
