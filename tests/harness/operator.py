"""An operator driving one VM through the migration flow over the public gRPC API, as a person with omactl would.

Each phase has a goal (a VM status reached by a job of the phase) and the operator acts on what it sees: it waits
while any job of the VM is open, then takes the next action the VM's status calls for — start the replication or the
failover, CleanupFailover after a failed test failover, RollbackFailover (powering the source on) after a failed
live failover, replicate again after a failed replication — until the goal holds. Calls the OMA cannot answer
(it is down) are tried again; a start carries a request id, so a retried one never starts a second job. Everything is
bounded: a job open past `job_timeout_s`, or a phase that needs more than `max_actions` actions, is a stuck run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from oma.v1 import (
    failover_pb2,
    failover_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from vma_client_stubs.connection import Endpoint, aio_channel
from vma_client_stubs.errors import error_info_of

R = replication_pb2
F = failover_pb2
V = vm_context_pb2
REPLICATION_FINAL = (
    R.REPLICATION_JOB_STATUS_COMPLETED,
    R.REPLICATION_JOB_STATUS_FAILED,
    R.REPLICATION_JOB_STATUS_CANCELLED,
)
FAILOVER_FINAL = (F.FAILOVER_JOB_STATUS_COMPLETED, F.FAILOVER_JOB_STATUS_FAILED)
# The OMA is restarting, or the call was cut by its death: ask again.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 300)]


class Stuck(Exception):
    """The flow did not reach its goal in bounded time: a job stayed open, or actions did not help."""


def vm_status(status: int) -> str:
    return V.VmContextStatus.Name(status).removeprefix("VM_CONTEXT_STATUS_").lower()


def replication_status(status: int) -> str:
    return R.ReplicationJobStatus.Name(status).removeprefix("REPLICATION_JOB_STATUS_").lower()


def failover_status(status: int) -> str:
    return F.FailoverJobStatus.Name(status).removeprefix("FAILOVER_JOB_STATUS_").lower()


def failover_kind(kind: int) -> str:
    return F.FailoverJobKind.Name(kind).removeprefix("FAILOVER_JOB_KIND_").lower()


@dataclass
class View:
    """The VM and its jobs as the API shows them now (jobs newest first)."""

    vm: V.VmContext
    replications: list[R.ReplicationJob]
    failovers: list[F.FailoverJob]

    @property
    def status(self) -> str:
        return vm_status(self.vm.status)

    def open_jobs(self) -> dict[str, str]:
        """Job id → what it is doing, for every job not final."""
        out = {
            j.id: f"replication {j.id} {replication_status(j.status)}"
            for j in self.replications
            if j.status not in REPLICATION_FINAL
        }
        out.update(
            {
                j.id: f"{failover_kind(j.kind)} {j.id} {failover_status(j.status)} at {j.current_step or '-'}"
                for j in self.failovers
                if j.status not in FAILOVER_FINAL
            }
        )
        return out


@dataclass
class Operator:
    oma: Endpoint
    vm_id: str
    deadline: float  # time.monotonic() by which the whole run must be done
    job_timeout_s: float = 90.0
    max_actions: int = 8
    actions: list[str] = field(default_factory=list)  # what it did (seconds into the run), for the report
    _channel: grpc.aio.Channel | None = None
    _started: float = field(default_factory=time.monotonic)
    # The readiness checks the OMA named when it last refused a failover (ErrorInfo metadata `failed_checks`).
    refused_checks: set[str] = field(default_factory=set)

    def note(self, what: str) -> None:
        self.actions.append(f"{time.monotonic() - self._started:.1f}s {what}")

    async def __aenter__(self) -> Operator:
        self._channel = aio_channel(self.oma, CHANNEL_OPTIONS)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()

    @property
    def channel(self) -> grpc.aio.Channel:
        assert self._channel is not None
        return self._channel

    # ---- calls ------------------------------------------------------------------------------------------------
    async def ask(self, call: Callable[..., Awaitable[Any]], request: Any, timeout: float = 10.0) -> Any:
        """A read the OMA answers once it is up again: retried until it answers or the run's deadline passes."""
        while True:
            try:
                return await call(request, timeout=timeout)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE or time.monotonic() > self.deadline:
                    raise
                await asyncio.sleep(0.1)

    async def view(self) -> View:
        vms = vm_context_pb2_grpc.VmContextServiceStub(self.channel)
        rep = replication_pb2_grpc.ReplicationServiceStub(self.channel)
        fo = failover_pb2_grpc.FailoverServiceStub(self.channel)
        # Jobs first, the VM after: a job ends in the transaction that moves the VM, so a VM read after its jobs
        # were seen final shows where they left it.
        replications = (
            await self.ask(
                rep.ListReplicationJobs, R.ListReplicationJobsRequest(vm_context_id=self.vm_id, page_size=1000)
            )
        ).jobs
        failovers = (
            await self.ask(fo.ListFailoverJobs, F.ListFailoverJobsRequest(vm_context_id=self.vm_id, page_size=1000))
        ).jobs
        vm = (await self.ask(vms.GetVmContext, V.GetVmContextRequest(id=self.vm_id))).vm_context
        newest = sorted(failovers, key=lambda j: (j.created_at.ToNanoseconds(), j.id), reverse=True)
        return View(vm, list(replications), newest)

    async def job_log(self, job_id: str) -> list[job_pb2.JobLogEntry]:
        stub = job_pb2_grpc.JobServiceStub(self.channel)
        reply = await self.ask(stub.ListJobLogEntries, job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=1000))
        return list(reply.entries)

    async def settle(self) -> View:
        """Wait until no job of the VM is open; a job open longer than job_timeout_s is stuck."""
        since: dict[str, float] = {}
        while True:
            view = await self.view()
            open_jobs = view.open_jobs()
            if not open_jobs:
                return view
            now = time.monotonic()
            oldest = min(since.setdefault(job_id, now) for job_id in open_jobs)
            if now - oldest > self.job_timeout_s or now > self.deadline:
                raise Stuck(f"job(s) still open after {now - oldest:.0f}s: {'; '.join(open_jobs.values())}")
            await asyncio.sleep(0.1)

    async def _act(self, what: str, call: Callable[..., Awaitable[Any]], request: Any) -> bool:
        """One mutating call, once. False when the OMA refused it for now (an appliance not yet back, say): the
        operator looks again a little later. When the OMA could not answer, the next look shows what happened."""
        self.note(what)
        try:
            await call(request, timeout=15)
        except grpc.aio.AioRpcError as err:
            if err.code() in RETRYABLE:
                self.note(f"({err.code().name}: looking again)")
                await asyncio.sleep(0.2)
            elif err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                info = error_info_of(err)
                self.refused_checks = set(info.metadata.get("failed_checks", "").split(",")) if info else set()
                refusal = f"(refused: {err.details()})"
                if self.actions[-2:-1] and self.actions[-2].endswith(refusal):
                    self.actions.pop()  # the same refusal again: one entry is enough
                else:
                    self.note(refusal)
                await asyncio.sleep(0.5)
                return False
            else:
                raise
        return True

    async def start_replication(self, kind: int) -> bool:
        stub = replication_pb2_grpc.ReplicationServiceStub(self.channel)
        request_id = uuid.uuid4().hex
        request = R.StartReplicationRequest(vm_context_id=self.vm_id, kind=kind, request_id=request_id)  # type: ignore[arg-type]
        return await self._act(f"StartReplication {R.ReplicationJobKind.Name(kind)}", stub.StartReplication, request)

    async def start_failover(self, kind: int) -> bool:
        stub = failover_pb2_grpc.FailoverServiceStub(self.channel)
        request = F.StartFailoverRequest(vm_context_id=self.vm_id, kind=kind, request_id=uuid.uuid4().hex)  # type: ignore[arg-type]
        return await self._act(f"StartFailover {failover_kind(kind)}", stub.StartFailover, request)

    async def cleanup(self) -> bool:
        stub = failover_pb2_grpc.FailoverServiceStub(self.channel)
        return await self._act(
            "CleanupFailover", stub.CleanupFailover, F.CleanupFailoverRequest(vm_context_id=self.vm_id)
        )

    async def rollback(self) -> bool:
        stub = failover_pb2_grpc.FailoverServiceStub(self.channel)
        request = F.RollbackFailoverRequest(vm_context_id=self.vm_id, power_on_source=True)
        return await self._act("RollbackFailover (power the source on)", stub.RollbackFailover, request)

    # ---- the phases -------------------------------------------------------------------------------------------
    async def run_phase(self, phase: str) -> None:
        """Act until the phase's goal holds (see the module docstring)."""
        before = await self.settle()
        old_replications = {j.id for j in before.replications}
        old_failovers = {j.id for j in before.failovers}
        self.note(f"[{phase}] VM {before.status}")
        taken = 0
        while taken < self.max_actions:
            view = await self.settle()
            new_replications = [j for j in view.replications if j.id not in old_replications]
            new_failovers = [j for j in view.failovers if j.id not in old_failovers]
            if _goal(phase, view, new_replications, new_failovers):
                self.note(f"[{phase}] done")
                return
            if time.monotonic() > self.deadline:
                break
            taken += await self._next_action(phase, view)
        view = await self.settle()
        raise Stuck(
            f"phase {phase}: goal not reached after {taken} actions; VM is {view.status}; "
            f"actions: {' / '.join(self.actions[-self.max_actions * 2 :])}"
        )

    async def _next_action(self, phase: str, view: View) -> bool:
        """The action the VM's status calls for in this phase; whether the OMA took it."""
        status = view.status
        incremental = R.REPLICATION_JOB_KIND_INCREMENTAL
        if status == "discovered" or (status == "failed" and phase == "initial"):
            return await self.start_replication(R.REPLICATION_JOB_KIND_INITIAL)
        if status == "failed":  # a partial copy: replicate again (full where no change id is recorded yet)
            return await self.start_replication(incremental)
        if status == "cleanup_required":
            return await (self.rollback() if _undoes_live(view.failovers) else self.cleanup())
        if status == "failed_over_test":
            return await self.cleanup()
        if status == "failed_over_live":
            return await self.rollback()
        if status == "ready_for_failover":
            if phase == "initial":
                return await self.start_replication(R.REPLICATION_JOB_KIND_INITIAL)
            if phase in ("incremental", "verify"):
                return await self.start_replication(incremental)
            if "replication_completed" in self.refused_checks:  # "run an incremental replication and let it complete"
                self.refused_checks = set()
                return await self.start_replication(incremental)
            if phase == "test_failover":
                return await self.start_failover(F.FAILOVER_JOB_KIND_TEST)
            if phase == "live_failover":
                return await self.start_failover(F.FAILOVER_JOB_KIND_LIVE)
            raise Stuck(f"phase {phase}: VM is ready_for_failover but nothing of the phase completed")
        raise Stuck(f"phase {phase}: no job is open but the VM is {status}")


def _undoes_live(failovers: list[F.FailoverJob]) -> bool:
    """Whether the failover that left the VM to undo was a live one (the newest test or live job)."""
    for job in failovers:
        if job.kind in (F.FAILOVER_JOB_KIND_TEST, F.FAILOVER_JOB_KIND_LIVE):
            return bool(job.kind == F.FAILOVER_JOB_KIND_LIVE)
    return False


def _completed(jobs: list[F.FailoverJob], kind: int) -> bool:
    return any(j.kind == kind and j.status == F.FAILOVER_JOB_STATUS_COMPLETED for j in jobs)


def _goal(phase: str, view: View, replications: list[R.ReplicationJob], failovers: list[F.FailoverJob]) -> bool:
    status = view.status
    if phase in ("initial", "incremental", "verify"):
        return status == "ready_for_failover" and any(
            j.status == R.REPLICATION_JOB_STATUS_COMPLETED and j.kind != R.REPLICATION_JOB_KIND_FINAL
            for j in replications
        )
    if phase == "test_failover":
        return status == "failed_over_test"
    if phase == "live_failover":
        return status == "failed_over_live"
    if phase == "cleanup":
        return status == "ready_for_failover" and _completed(failovers, F.FAILOVER_JOB_KIND_CLEANUP)
    if phase == "rollback":
        return status == "ready_for_failover" and _completed(failovers, F.FAILOVER_JOB_KIND_ROLLBACK)
    raise ValueError(f"unknown phase {phase!r}")
