"""Group runs: a machine group failed over (test or live) in its boot order, or cleaned up in the reverse order.

A run is a row before it is a task: its plan (every member, its boot order, later its job) is written at the start,
and each member's job id in the transaction after the job starts. The job's request_id names the run and the VM,
so after a crash between the start and that write the resumed run finds the job instead of starting a second.
`resume` continues every running run after an OMA restart; its task only waits on the members' failover jobs,
which the failover workflow resumes on its own.

Tiers: the members of one boot order start together; a failover's next tier starts when every job of the tier
completed — the failover's last step checks the VM runs in CloudStack, so "completed" is "running". A failed
failover stops the run there: later tiers are NOT_STARTED and what runs stays (CleanupGroupFailover removes it). A
cleanup goes on through every tier (each member's cleanup is independent; leaving test VMs behind helps nobody)
and fails at the end if a member's did. Readiness of every member is checked before a failover starts anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import FailoverJob, GroupRun, MachineGroup, VmContext
from oma_server.engine import JobRunner
from oma_server.errors import DomainError, FailedPrecondition, NotFound, Unavailable, Violation
from oma_server.failover.state_machine import FailoverJobState, FailoverKind, FailoverStatus
from oma_server.failover.workflow import FailoverWorkflow
from oma_server.groups.store import group_not_found, members_of, refuse_while_running
from oma_server.pagination import fetch_page
from oma_server.vm_contexts.state_machine import VmStatus

TEST_FAILOVER, LIVE_FAILOVER, CLEANUP = "test_failover", "live_failover", "cleanup"
RUN_KINDS = (TEST_FAILOVER, LIVE_FAILOVER, CLEANUP)
# member and run statuses (the proto's GroupRunStatus)
PENDING, RUNNING, COMPLETED, FAILED, SKIPPED, NOT_STARTED = (
    "pending",
    "running",
    "completed",
    "failed",
    "skipped",
    "not_started",
)
CANCELLING, CANCELLED = "cancelling", "cancelled"
IN_PROGRESS = (RUNNING, CANCELLING)
CLEANABLE = (VmStatus.FAILED_OVER_TEST.value, VmStatus.CLEANUP_REQUIRED.value)


def run_not_found(run_id: str) -> NotFound:
    return NotFound(
        f"group run {run_id} does not exist; list them with ListGroupRuns",
        reason="GROUP_RUN_NOT_FOUND",
        group_run_id=run_id,
    )


def member_request_id(run_id: str, vm_id: str) -> str:
    return f"group-run-{run_id}-{vm_id}"


def tiers(members: list[dict[str, Any]], reverse: bool) -> list[int]:
    return sorted({int(m["boot_order"]) for m in members}, reverse=reverse)


class GroupRuns:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        failover: Callable[[], FailoverWorkflow | None],
        poll_interval_s: float = 0.25,
    ) -> None:
        """`failover` gives the failover workflow once the App built it (at start, with the CloudStack client)."""
        self.db = db
        self.clock = clock
        self.failover = failover
        self.poll_interval_s = poll_interval_s
        self.runner = JobRunner("group-run")

    def _workflow(self) -> FailoverWorkflow:
        workflow = self.failover()
        if workflow is None:
            raise Unavailable("the failover service is starting; retry in a moment", reason="NOT_READY")
        return workflow

    # ---- operator actions ---------------------------------------------------------------------------------------
    async def start_failover(self, group_id: str, kind: str) -> GroupRun:
        workflow = self._workflow()
        group, plan = await self.db.run(_plan, group_id)
        await self.db.run(refuse_while_running, group)  # before readiness: a running run is the first thing to say
        failover_kind = FailoverKind.TEST if kind == TEST_FAILOVER else FailoverKind.LIVE
        not_ready, violations = [], []
        for member in plan:
            readiness = await workflow.check(member["vm_context_id"], failover_kind)
            if not readiness.ready:
                failed = "; ".join(f"{c.name}: {c.reason}" for c in readiness.failed)
                not_ready.append(f"{member['vm_name']} ({member['vm_context_id']}): {failed}")
                violations += [
                    Violation("READINESS_CHECK", f"vm_contexts/{member['vm_context_id']}/{c.name}", c.reason)
                    for c in readiness.failed
                ]
        if not_ready:
            raise FailedPrecondition(
                f"machine group {group.name}: {len(not_ready)} of {len(plan)} VMs are not ready for a "
                f"{failover_kind.value} failover, nothing started — " + " | ".join(not_ready),
                reason="GROUP_NOT_READY",
                violations=violations,
                group_id=group_id,
                not_ready=",".join(m.split(" ", 1)[0] for m in not_ready),
            )
        return await self._create(group, kind, plan)

    async def cleanup(self, group_id: str) -> GroupRun:
        self._workflow()
        group, plan = await self.db.run(_plan, group_id)
        return await self._create(group, CLEANUP, plan)

    async def _create(self, group: MachineGroup, kind: str, plan: list[dict[str, Any]]) -> GroupRun:
        now = self.clock.now()
        first = tiers(plan, reverse=kind == CLEANUP)[0]

        def insert() -> GroupRun:
            refuse_while_running(group)
            return GroupRun.create(
                group_id=group.id,
                group_name=group.name,
                kind=kind,
                status=RUNNING,
                members=plan,
                current_boot_order=first,
                created_at=now,
                updated_at=now,
            )

        run = await self.db.tx(insert)
        logger.bind(group_id=group.id, group_run_id=run.id).info(
            "group {kind} of {name} started: {n} VMs", kind=kind.replace("_", " "), name=group.name, n=len(plan)
        )
        self._spawn(run.id)
        return run

    async def get(self, run_id: str) -> GroupRun:
        row = await self.db.run(GroupRun.get_or_none, GroupRun.id == run_id) if run_id else None
        if row is None:
            raise run_not_found(run_id)
        return row

    async def list_runs(self, page_size: int, page_token: str, group_id: str = "") -> tuple[list[GroupRun], str]:
        def query() -> tuple[list[GroupRun], str]:
            q = GroupRun.select().order_by(GroupRun.created_at.desc(), GroupRun.id)
            if group_id:
                q = q.where(GroupRun.group_id == group_id)
            return fetch_page(q, page_size, page_token)

        return await self.db.run(query)

    # ---- life -----------------------------------------------------------------------------------------------
    def _spawn(self, run_id: str) -> None:
        self.runner.start(run_id, lambda: self._run(run_id))

    async def resume(self) -> list[str]:
        """Continue every run an earlier process left running."""
        ids = await self.db.run(
            lambda: [r.id for r in GroupRun.select(GroupRun.id).where(GroupRun.status.in_(IN_PROGRESS))]
        )
        for run_id in ids:
            logger.bind(group_run_id=run_id).info("resuming group run")
            self._spawn(run_id)
        return ids

    async def stop(self) -> None:
        await self.runner.stop()

    async def wait(self, run_id: str, timeout_s: float = 60.0) -> GroupRun:
        """Wait until the run's task ends (tests and the demo); returns the run."""
        await self.runner.wait(run_id, timeout_s)
        return await self.get(run_id)

    # ---- the run ----------------------------------------------------------------------------------------------
    async def _run(self, run_id: str) -> None:
        run = await self.get(run_id)
        log = logger.bind(group_id=run.group_id, group_run_id=run_id)
        members: list[dict[str, Any]] = [dict(m) for m in run.members]
        cleanup = run.kind == CLEANUP
        failures: list[str] = []
        for order in tiers(members, reverse=cleanup):
            tier = [m for m in members if int(m["boot_order"]) == order]
            stop = "an earlier boot order failed" if failures and not cleanup else ""
            if await self._cancelling(run_id):
                stop = "the run was cancelled before it started"
            if stop:
                for member in tier:
                    if member["status"] == PENDING:
                        member.update(status=NOT_STARTED, message=stop)
                continue
            await self._save(run_id, members, order)
            for member in tier:
                if member["status"] == PENDING and not await self._cancelling(run_id):
                    await self._start_member(run, member)
            await self._save(run_id, members, order)
            for member in tier:
                if member["status"] == RUNNING:
                    await self._await_member(run_id, member)
                elif member["status"] == PENDING:
                    member.update(status=NOT_STARTED, message="the run was cancelled before it started")
            failures += [f"{m['vm_name']}: {m['message']}" for m in tier if m["status"] == FAILED]
            await self._save(run_id, members, order)
            log.info("boot order {order} done", order=order)
        status, error = _outcome(run.kind, members, failures, await self._cancelling(run_id))
        await self._save(run_id, members, None, status=status, error=error)
        log.info("group {kind} {status}", kind=run.kind.replace("_", " "), status=status)

    async def _cancelling(self, run_id: str) -> bool:
        row = await self.db.run(GroupRun.get_or_none, GroupRun.id == run_id)
        return row is not None and row.status == CANCELLING

    async def cancel(self, run_id: str) -> GroupRun:
        """Stop a run: no member starts any more, the members' running jobs are cancelled (each as a failover job
        is: at once when that is safe, else after its current step), and the run ends `cancelled`. What already ran
        stays (CleanupGroupFailover removes test VMs). A run that ended is returned as it is."""

        def request() -> GroupRun:
            row = GroupRun.get_or_none(GroupRun.id == run_id) if run_id else None
            if row is None:
                raise run_not_found(run_id)
            if row.status == RUNNING:
                GroupRun.update(status=CANCELLING, updated_at=self.clock.now()).where(
                    (GroupRun.id == run_id) & (GroupRun.status == RUNNING)
                ).execute()
                row = GroupRun.get_by_id(run_id)
            return row

        row = await self.db.tx(request)
        logger.bind(group_id=row.group_id, group_run_id=run_id).info("group run cancel requested")
        return row

    async def _start_member(self, run: GroupRun, member: dict[str, Any]) -> None:
        vm_id = member["vm_context_id"]
        request_id = member_request_id(run.id, vm_id)
        existing = await self.db.run(FailoverJob.get_or_none, FailoverJob.request_id == request_id)
        if existing is not None:  # started before a restart, its id not written yet
            member.update(failover_job_id=existing.id, status=RUNNING, message="resumed")
            return
        workflow = self._workflow()
        try:
            if run.kind == CLEANUP:
                vm = await self.db.run(VmContext.get_or_none, VmContext.id == vm_id)
                if vm is None or vm.status not in CLEANABLE:
                    status = vm.status if vm is not None else "deleted"
                    member.update(status=SKIPPED, message=f"nothing to clean up (VM is {status})")
                    return
                job: FailoverJobState = await workflow.cleanup(vm_id, request_id=request_id)
            else:
                kind = FailoverKind.TEST if run.kind == TEST_FAILOVER else FailoverKind.LIVE
                job = await workflow.start_failover(vm_id, kind, request_id=request_id)
        except DomainError as exc:
            member.update(status=FAILED, message=f"not started: {exc.message}")
            return
        member.update(failover_job_id=job.id, status=RUNNING, message=f"{job.kind.value} job {job.id} runs")

    async def _await_member(self, run_id: str, member: dict[str, Any]) -> None:
        workflow = self._workflow()
        job_id = member["failover_job_id"]
        cancel_sent = False
        while True:
            job = await workflow.store.get(job_id)
            if job.final:
                break
            if not cancel_sent and await self._cancelling(run_id):
                with contextlib.suppress(DomainError):  # it may have ended meanwhile
                    await workflow.cancel(job_id)
                cancel_sent = True
            await asyncio.sleep(self.poll_interval_s)
        if job.status == FailoverStatus.COMPLETED:
            done = "VM runs in CloudStack" if job.kind in (FailoverKind.TEST, FailoverKind.LIVE) else "cleaned up"
            member.update(status=COMPLETED, message=f"{done} (job {job_id})")
        elif job.status == FailoverStatus.CANCELLED:
            member.update(status=CANCELLED, message=f"job {job_id} cancelled: {job.outcome or 'with the run'}")
        else:
            member.update(status=FAILED, message=f"job {job_id} {job.status.value}: {job.error_message or 'no detail'}")

    async def _save(
        self, run_id: str, members: list[dict[str, Any]], order: int | None, *, status: str = "", error: str = ""
    ) -> None:
        """The members' progress (and, with `status`, the run's end); never writes over a cancel request."""
        now: datetime = self.clock.now()
        fields: dict[Any, Any] = {
            GroupRun.members: members,
            GroupRun.current_boot_order: order,
            GroupRun.updated_at: now,
        }
        if status:
            fields.update({GroupRun.status: status, GroupRun.error_message: error, GroupRun.finished_at: now})
        await self.db.tx(GroupRun.update(fields).where(GroupRun.id == run_id).execute)


def _outcome(kind: str, members: list[dict[str, Any]], failures: list[str], cancelled: bool) -> tuple[str, str]:
    """The run's final status and error message."""
    if cancelled:
        ran = [m["vm_name"] for m in members if m["status"] == COMPLETED]
        left = f"; done before the cancel: {', '.join(ran)}" if ran else ""
        hint = " (CleanupGroupFailover removes their test VMs)" if ran and kind == TEST_FAILOVER else ""
        return CANCELLED, f"cancelled{left}{hint}"
    if not failures:
        return COMPLETED, ""
    what = "cleanup" if kind == CLEANUP else "failover"
    error = f"the {what} of {len(failures)} VM(s) failed — " + " | ".join(failures)
    if kind != CLEANUP:
        error += "; later boot orders did not start. Run CleanupGroupFailover, or fix and fail them over"
    return FAILED, error


def _plan(group_id: str) -> tuple[MachineGroup, list[dict[str, Any]]]:
    """The group and its members as a run's plan (on a database thread); FAILED_PRECONDITION for an empty group."""
    group = MachineGroup.get_or_none(MachineGroup.id == group_id) if group_id else None
    if group is None:
        raise group_not_found(group_id)
    members = members_of(group_id)
    if not members:
        raise FailedPrecondition(
            f"machine group {group.name} has no VMs; add some with UpdateMachineGroup",
            reason="GROUP_EMPTY",
            group_id=group_id,
        )
    names = {vm.id: vm.name for vm in VmContext.select().where(VmContext.id.in_([m.vm_context_id for m in members]))}
    plan = [
        {
            "vm_context_id": m.vm_context_id,
            "vm_name": names.get(m.vm_context_id, ""),
            "boot_order": m.boot_order,
            "failover_job_id": "",
            "status": PENDING,
            "message": "",
        }
        for m in members
    ]
    return group, plan
