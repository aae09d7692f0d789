"""The one state machine of a VM context (DESIGN.md §3).

discovered → replicating → ready_for_failover → failed_over_test | failed_over_live → completed, plus failed and
cleanup_required. Functions here run inside the caller's transaction, so a VM context's status changes together
with the job that causes it.
"""

from __future__ import annotations

from enum import StrEnum

from loguru import logger

from oma_server.db.models import VmContext, utcnow
from oma_server.errors import FailedPrecondition


class VmStatus(StrEnum):
    DISCOVERED = "discovered"
    REPLICATING = "replicating"
    READY_FOR_FAILOVER = "ready_for_failover"
    FAILED_OVER_TEST = "failed_over_test"
    FAILED_OVER_LIVE = "failed_over_live"
    COMPLETED = "completed"
    FAILED = "failed"
    CLEANUP_REQUIRED = "cleanup_required"


_ALLOWED: dict[VmStatus, frozenset[VmStatus]] = {
    VmStatus.DISCOVERED: frozenset({VmStatus.REPLICATING}),
    VmStatus.REPLICATING: frozenset({VmStatus.READY_FOR_FAILOVER, VmStatus.FAILED, VmStatus.DISCOVERED}),
    VmStatus.READY_FOR_FAILOVER: frozenset(
        {VmStatus.REPLICATING, VmStatus.FAILED_OVER_TEST, VmStatus.FAILED_OVER_LIVE, VmStatus.CLEANUP_REQUIRED}
    ),
    VmStatus.FAILED_OVER_TEST: frozenset({VmStatus.READY_FOR_FAILOVER, VmStatus.CLEANUP_REQUIRED}),
    VmStatus.FAILED_OVER_LIVE: frozenset({VmStatus.COMPLETED, VmStatus.READY_FOR_FAILOVER, VmStatus.CLEANUP_REQUIRED}),
    VmStatus.COMPLETED: frozenset(),
    VmStatus.FAILED: frozenset({VmStatus.REPLICATING, VmStatus.CLEANUP_REQUIRED, VmStatus.READY_FOR_FAILOVER}),
    VmStatus.CLEANUP_REQUIRED: frozenset({VmStatus.READY_FOR_FAILOVER, VmStatus.FAILED}),
}


def allowed(src: VmStatus, dst: VmStatus) -> bool:
    """Whether a VM context may move from `src` to `dst` (staying is always allowed: its job fields may change)."""
    return src == dst or dst in _ALLOWED[src]


def transition_vm(
    vm_id: str, dst: VmStatus, *, active_job_id: str | None = None, last_completed_job_id: str | None = None
) -> VmContext:
    """Move a VM context to `dst` (inside a transaction); FailedPrecondition when illegal."""
    vm = VmContext.get_by_id(vm_id)
    src = VmStatus(vm.status)
    if not allowed(src, dst):
        logger.bind(vm_context_id=vm_id).warning("refused VM transition {src} → {dst}", src=src, dst=dst)
        raise FailedPrecondition(
            f"VM {vm.name} ({vm_id}) is {src.value}; it cannot become {dst.value}",
            reason="ILLEGAL_VM_TRANSITION",
            vm_context_id=vm_id,
            status=src.value,
            requested=dst.value,
        )
    vm.status = dst.value
    if active_job_id is not None:
        vm.active_job_id = active_job_id
    if last_completed_job_id is not None:
        vm.last_completed_job_id = last_completed_job_id
    vm.updated_at = utcnow()
    vm.save()
    if src != dst:
        logger.bind(vm_context_id=vm_id).info("VM {name}: {src} → {dst}", name=vm.name, src=src, dst=dst)
    return vm
