"""What cancelling a failover-engine job means: whether it may be cancelled now, what it leaves, where the VM goes.

The runner (workflow.py) stops the job's task and commits the cancel; the decisions are here, pure or inside the
cancel's transaction. See state_machine's docstring for which steps stop at once and which finish first.
"""

from __future__ import annotations

from oma_server.db.models import VmContext
from oma_server.errors import FailedPrecondition
from oma_server.failover import state_machine as sm
from oma_server.failover.state_machine import FailoverJobState, FailoverKind, StepStatus
from oma_server.joblog import end_step, note
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm


class CancelRefused(FailedPrecondition):
    default_reason = "CANCEL_NOT_SAFE"


def check_cancellable(job: FailoverJobState) -> None:
    """FAILED_PRECONDITION when the job cannot be cancelled: an undo (whatever its state), or a job that ended."""
    if job.kind in sm.UNDO:
        raise CancelRefused(
            f"{job.kind.value} job {job.id} is not cancelled: {job.kind.value} jobs bring back what a failover "
            "changed, and stopping one half-way would leave volumes between VMs; let it finish (its steps are safe to "
            "repeat, so run it again if it fails)",
            job_id=job.id,
            kind=job.kind.value,
        )
    if job.final:
        raise FailedPrecondition(
            f"{job.kind.value} job {job.id} is {job.status.value}; only a job that has not ended can be cancelled",
            reason="JOB_NOT_CANCELLABLE",
            job_id=job.id,
            status=job.status.value,
        )


def stops_at_once(job: FailoverJobState, runs_here: bool) -> bool:
    """Whether the job can stop now, or must finish the step it is in first."""
    step = job.running_step()
    return step is None or not runs_here or step.name in sm.INTERRUPTIBLE


def changed_anything(job: FailoverJobState) -> bool:
    """Whether a step past the read-only validation began: then there is something for cleanup to undo."""
    return any(s.name != "validate" and s.attempts > 0 for s in job.steps)


def outcome_of_cancel(job: FailoverJobState) -> str:
    step = job.running_step()
    where = f"at step {step.name}" if step is not None else "before its next step"
    if job.kind in sm.POWER:
        return f"cancelled {where}; the source VM's power state is unchanged by this job"
    if job.kind in sm.KEEPS_STATUS:
        return f"cancelled {where}; the replicas are released and the VM context is as before (nothing recorded)"
    if not changed_anything(job):
        return f"cancelled {where}; nothing was changed, the VM context is as before"
    text = f"cancelled {where}; run CleanupFailover for this VM to remove what the failover created"
    if job.params.get("source_powered_off"):
        text = (
            f"cancelled {where}; the source VM is powered off: run RollbackFailover with power_on_source to bring "
            "it back (or CleanupFailover and power it on later)"
        )
    if job.params.get("replicas_dirty"):
        text += "; the final sync was stopped part-way, so replicate again before the next failover"
    return text


def record_cancel(state: FailoverJobState) -> None:
    """Inside the cancel's transaction: the step's log entry closed, the VM context released, a log note."""
    for step in state.steps:
        if step.status == StepStatus.CANCELLED and step.log_id:
            end_step(step.log_id, "failed", "cancelled by the operator")
    if state.kind in sm.KEEPS_STATUS:
        vm = VmContext.get_by_id(state.vm_context_id)
        if vm.active_job_id == state.id:
            transition_vm(state.vm_context_id, VmStatus(vm.status), active_job_id="")
    if state.kind in sm.FAILOVERS:
        vm = VmContext.get_by_id(state.vm_context_id)
        if vm.active_job_id in ("", state.id):
            status = VmStatus.CLEANUP_REQUIRED if changed_anything(state) else VmStatus(vm.status)
            transition_vm(state.vm_context_id, status, active_job_id="")
    note(state.id, "cancel", state.outcome)


def outcome_of_completion(job: FailoverJobState) -> str:
    """What a job that completed left, for the kinds where the operator needs to be told."""
    if job.kind == FailoverKind.ROLLBACK:
        if job.params.get("power_on_source"):
            return "rolled back; the source VM was powered on"
        return (
            "rolled back; the source VM is left powered off — power it on with PowerOnSourceVm when it should run again"
        )
    if job.kind == FailoverKind.POWER_ON_SOURCE:
        return "the source VM is powered on"
    if job.kind == FailoverKind.POWER_OFF_SOURCE:
        return "the source VM is powered off"
    if job.kind == FailoverKind.VERIFY:
        return "every replica read back at rest matches its block-hash map"
    if job.kind == FailoverKind.LIVE:
        return f"the VM runs in CloudStack as {job.target_vm_name}; the source VM is powered off"
    if job.kind == FailoverKind.TEST:
        return f"test VM {job.target_vm_name} runs; the source VM keeps running — run CleanupFailover when done"
    return "cleaned up; the VM context is ready for the next failover"
