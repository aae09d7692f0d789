"""How a failover-engine job's end reads and what it does to its VM context, where that is not the workflow's own
business: the operator's next action after a failure, by kind, and the kinds that keep the VM context's status.

`keep_status` runs inside the job's final transaction.
"""

from __future__ import annotations

from oma_server.db.models import VmContext
from oma_server.failover.state_machine import FailoverJobState, FailoverKind
from oma_server.joblog import note
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm

# What an operator does after a failed job, by kind.
_NEXT_ACTION = {
    FailoverKind.TEST: "Run CleanupFailover for this VM: it removes what the failover created and returns the VM to "
    "ready_for_failover; then fix the cause and start the failover again.",
    FailoverKind.LIVE: "Run CleanupFailover (or RollbackFailover with power_on_source to also power the source VM "
    "back on): it removes what the failover created; then fix the cause and start the failover again.",
    FailoverKind.CLEANUP: "Fix the cause, then run CleanupFailover again: its steps check CloudStack first and are "
    "safe to repeat.",
    FailoverKind.ROLLBACK: "Fix the cause, then run RollbackFailover again: its steps check CloudStack first and are "
    "safe to repeat.",
    FailoverKind.POWER_ON_SOURCE: "Fix the cause, then ask again (PowerOnSourceVm), or power the VM on in vCenter.",
    FailoverKind.POWER_OFF_SOURCE: "Fix the cause, then ask again (PowerOffSourceVm), or power the VM off in vCenter.",
    FailoverKind.VERIFY: "The VM context is as before and its replicas are released. The blocks found different are "
    "recopied by the disk's next sync (StartReplication, or its schedule), whose read-back verifies them; other "
    "causes: fix them and verify again (VerifyVmContext).",
}


def failure_message(kind: FailoverKind, step: str, error: str, hint: str) -> str:
    return f"step {step} failed: {error}. Hint: {hint}. {_NEXT_ACTION[kind]}"


def keep_status(state: FailoverJobState, step: str) -> None:
    """A job that claimed the VM context without changing its status (a verification) gives it back as it was."""
    vm = VmContext.get_by_id(state.vm_context_id)
    if vm.active_job_id == state.id:
        transition_vm(state.vm_context_id, VmStatus(vm.status), active_job_id="")
    note(state.id, step, f"VM context released, still {vm.status}; {state.outcome}")
