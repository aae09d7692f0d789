"""Every state machine as a table: every status by every requested status → the next state, or refused (issue #12).

The expected tables are written out here from DESIGN.md §5 and the machines' docstrings, not derived from the code,
so a change to a machine has to change its table too.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from oma_server.errors import FailedPrecondition
from oma_server.failover import state_machine as fsm
from oma_server.failover.state_machine import FailoverJobState, FailoverKind, FailoverStatus, StepStatus
from oma_server.replication.state_machine import DiskState, JobState, JobStatus, allowed, complete, transition
from oma_server.vm_contexts.state_machine import VmStatus
from oma_server.vm_contexts.state_machine import allowed as vm_allowed

NOW = datetime(2026, 12, 1, 12, 0, 0)

# Replication job: rows are the current status, columns the requested one, "x" = allowed.
R = JobStatus
R_ORDER = [
    R.PENDING,
    R.PROVISIONING,
    R.WAITING_FOR_VMA,
    R.REPLICATING,
    R.STALLED,
    R.COMPLETING,
    R.COMPLETED,
    R.FAILED,
    R.CANCELLING,
    R.CANCELLED,
]
R_TABLE = """
                 pend prov wait repl stal cmpg cmpd fail cncg cncd
pending           .    x    x    .    .    .    .    x    x    .
provisioning      .    .    x    .    .    .    .    x    x    .
waiting_for_vma   .    .    .    x    x    x    .    x    x    .
replicating       .    .    .    .    x    x    .    x    x    .
stalled           .    .    x    x    .    x    .    x    x    .
completing        .    .    .    .    .    .    x    x    .    .
completed         .    .    .    .    .    .    .    .    .    .
failed            .    .    .    .    .    .    .    .    .    .
cancelling        .    .    .    .    .    x    .    x    .    x
cancelled         .    .    .    .    .    .    .    .    .    .
"""


def table(text: str, order: list) -> dict[tuple, bool]:  # type: ignore[type-arg]
    rows = [line.split() for line in text.strip().splitlines()[1:]]
    assert [r[0] for r in rows] == [s.value for s in order]
    return {(order[i], order[j]): mark == "x" for i, row in enumerate(rows) for j, mark in enumerate(row[1:])}


def job(status: JobStatus, **fields: object) -> JobState:
    disks = [DiskState(disk_id=f"d{i}", disk_key=2000 + i, bytes_total=100, new_change_id=f"c{i}") for i in range(2)]
    return JobState(id="j", vm_context_id="vm", appliance_id="a", kind="initial", status=status, disks=disks, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("src", "dst"), sorted(table(R_TABLE, R_ORDER), key=lambda p: (p[0].value, p[1].value)))
def test_replication_job_transitions_follow_the_table(src: JobStatus, dst: JobStatus) -> None:
    expected = table(R_TABLE, R_ORDER)[(src, dst)]
    assert allowed(src, dst) == expected
    if not expected:
        with pytest.raises(FailedPrecondition) as err:
            transition(job(src), dst, NOW)
        assert err.value.reason == "ILLEGAL_TRANSITION" and src.value in err.value.message
        return
    after = transition(job(src), dst, NOW, error_reason="X", error_message="why")
    assert after.status == dst and after.updated_at == NOW and after.current_operation
    if dst in (R.COMPLETED, R.FAILED, R.CANCELLED):
        assert after.finished_at == NOW and after.throughput_bytes_per_second == 0 and after.eta_seconds is None
    if dst == R.COMPLETED:
        assert after.percent == 100.0 and all(d.completed and d.bytes_done == d.bytes_total for d in after.disks)
    if dst == R.FAILED:
        assert (after.error_reason, after.error_message) == ("X", "why")
    if dst == R.REPLICATING:
        assert after.started_at == NOW


def test_a_started_job_keeps_its_start_time() -> None:
    earlier = datetime(2026, 1, 1)
    after = transition(job(R.STALLED, started_at=earlier), R.REPLICATING, NOW)
    assert after.started_at == earlier


@pytest.mark.parametrize(
    ("src", "outcome"),
    [
        (R.WAITING_FOR_VMA, R.COMPLETED),
        (R.REPLICATING, R.COMPLETED),
        (R.STALLED, R.COMPLETED),
        (R.COMPLETING, R.COMPLETED),
        (R.CANCELLING, R.COMPLETED),  # the copy finished before the cancel reached the appliance: kept
        (R.PENDING, None),
        (R.PROVISIONING, None),
        (R.COMPLETED, None),
        (R.FAILED, None),
        (R.CANCELLED, None),
    ],
)
def test_completion_is_one_step_from_every_status(src: JobStatus, outcome: JobStatus | None) -> None:
    if outcome is None:
        with pytest.raises(FailedPrecondition):
            complete(job(src), NOW)
        return
    assert complete(job(src), NOW).status == outcome


def test_completion_without_every_change_id_fails_the_job() -> None:
    missing = job(R.REPLICATING)
    missing.disks[1].new_change_id = ""
    after = complete(missing, NOW)
    assert (after.status, after.error_reason) == (R.FAILED, "CHANGE_ID_MISSING") and "d1" in after.error_message


V = VmStatus
V_ORDER = [
    V.DISCOVERED,
    V.REPLICATING,
    V.READY_FOR_FAILOVER,
    V.FAILED_OVER_TEST,
    V.FAILED_OVER_LIVE,
    V.COMPLETED,
    V.FAILED,
    V.CLEANUP_REQUIRED,
]
V_TABLE = """
                    disc repl rdy  test live done fail clnp
discovered           x    x    .    .    .    .    .    .
replicating          x    x    x    .    .    .    x    .
ready_for_failover   .    x    x    x    x    .    .    x
failed_over_test     .    .    x    x    .    .    .    x
failed_over_live     .    .    x    .    x    x    .    x
completed            .    .    .    .    .    x    .    .
failed               .    x    x    .    .    .    x    x
cleanup_required     .    .    x    .    .    .    x    x
"""


@pytest.mark.parametrize(("src", "dst"), sorted(table(V_TABLE, V_ORDER), key=lambda p: (p[0].value, p[1].value)))
def test_vm_context_transitions_follow_the_table(src: VmStatus, dst: VmStatus) -> None:
    assert vm_allowed(src, dst) == table(V_TABLE, V_ORDER)[(src, dst)]


# Failover job: which operation each job status accepts.
F_OPERATIONS = {
    FailoverStatus.PENDING: {"start_job", "fail_job", "request_cancel", "cancel_job"},
    FailoverStatus.RUNNING: {"start_job", "start_step", "finish_step", "complete_job", "fail_job", "request_cancel",
                             "cancel_job"},
    FailoverStatus.COMPLETED: set(),
    FailoverStatus.FAILED: set(),
    FailoverStatus.CANCELLED: set(),
    # a scheduled cutover: started at its time, failed when not ready then, cancelled at once (never "requested")
    FailoverStatus.SCHEDULED: {"start_scheduled", "fail_job", "cancel_job"},
}  # fmt: skip
F_OPERATION_NAMES = [
    "start_job",
    "start_step",
    "finish_step",
    "complete_job",
    "fail_job",
    "request_cancel",
    "cancel_job",
    "start_scheduled",
]


def failover_job(status: FailoverStatus) -> FailoverJobState:
    state = FailoverJobState(id="f", vm_context_id="vm", kind=FailoverKind.TEST, status=status)
    state.steps = fsm.new_steps(FailoverKind.TEST)
    return state


def apply(state: FailoverJobState, operation: str) -> None:
    first = state.steps[0].name
    if operation == "start_job":
        fsm.start_job(state, "p")
    elif operation == "start_step":
        fsm.start_step(state, first, NOW)
    elif operation == "finish_step":
        state.steps[0].status = StepStatus.RUNNING
        fsm.finish_step(state, first, NOW)
    elif operation == "complete_job":
        for step in state.steps:
            step.status = StepStatus.COMPLETED
        fsm.complete_job(state, NOW)
    elif operation == "request_cancel":
        fsm.request_cancel(state)
    elif operation == "cancel_job":
        fsm.cancel_job(state, NOW, "nothing to undo")
    elif operation == "start_scheduled":
        fsm.start_scheduled(state, "p")
    else:
        fsm.fail_job(state, NOW, first, "VALIDATE_FAILED", "why")


@pytest.mark.parametrize("status", list(FailoverStatus))
@pytest.mark.parametrize("operation", F_OPERATION_NAMES)
def test_failover_job_operations_follow_the_table(status: FailoverStatus, operation: str) -> None:
    state = failover_job(status)
    if operation in F_OPERATIONS[status]:
        apply(state, operation)
        return
    with pytest.raises(FailedPrecondition):
        apply(state, operation)


def test_a_failover_job_completes_only_with_every_step_done() -> None:
    state = failover_job(FailoverStatus.RUNNING)
    with pytest.raises(FailedPrecondition):
        fsm.complete_job(state, NOW)
    for step in state.steps:
        step.status = StepStatus.SKIPPED
    fsm.complete_job(state, NOW)
    assert state.status == FailoverStatus.COMPLETED and state.finished_at == NOW


def test_a_step_left_running_by_a_crash_runs_again_with_its_attempts_counted() -> None:
    state = failover_job(FailoverStatus.RUNNING)
    first = state.steps[0].name
    fsm.start_step(state, first, NOW)
    assert state.next_step() is state.steps[0]  # still running: resumed first
    fsm.start_step(state, first, NOW)
    assert state.steps[0].attempts == 2
    fsm.finish_step(state, first, NOW)
    with pytest.raises(FailedPrecondition):
        fsm.start_step(state, first, NOW)  # done: never again
