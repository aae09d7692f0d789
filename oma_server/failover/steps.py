"""The steps of failover, cleanup and rollback: each idempotent, each checks CloudStack's state before it acts.

A step may run again after a crash, so every step first looks at what exists: a snapshot already taken is found by
its recorded id or its deterministic name, a VM already deployed is adopted by id or by name (only when this job
asked CloudStack for it), a volume already attached where it should be is left alone. What a step learns is recorded
on the job (snapshot_ids, target_vm_id, params) as soon as it is known, in a committed change of the job.

External actions inside steps are job-log entries of their own (create_snapshot, deploy_vm, attach_volume...), so
the job log names every CloudStack call and how it ended.
"""

from __future__ import annotations

import functools

from oma_server.engine import OUTAGE, Step
from oma_server.failover.forward_steps import ForwardSteps
from oma_server.failover.step_base import (
    SNAPSHOT_PREFIX,
    Replica,
    StepContext,
    StepResult,
    StepSettings,
    snapshot_name,
)
from oma_server.failover.undo_steps import UndoSteps

__all__ = [
    "SNAPSHOT_PREFIX",
    "FailoverStep",
    "FailoverSteps",
    "Replica",
    "StepContext",
    "StepResult",
    "StepSettings",
    "snapshot_name",
]

FailoverStep = Step[StepContext, StepResult]


class FailoverSteps(ForwardSteps, UndoSteps):
    """Every step of every kind of failover job, declared once."""

    @functools.cached_property
    def declared(self) -> dict[str, FailoverStep]:
        # Every step once: its function, where an operator looks when it fails, its retry rule. Steps that talk to
        # CloudStack wait out an outage (engine.OUTAGE); the others fail at once. The order of the steps of each kind
        # of job is the state machine's (state_machine.STEPS).
        declared = [*self._forward(), *self._undo()]
        by_name = {step.name: step for step in declared}
        # the step's name before replicas left the OMA VM between jobs: cleanup jobs recorded with it resume
        by_name["reattach_to_oma"] = by_name["release_volumes"]
        return by_name

    def _forward(self) -> list[FailoverStep]:
        """The steps of a failover (forward_steps.py)."""
        return [
            Step(
                "validate", self.validate, "the readiness checks (CheckFailoverReadiness) say what is missing", OUTAGE
            ),
            Step(
                "power_off_source", self.power_off_source, "check that the appliance is connected and can reach vCenter"
            ),
            Step("final_sync", self.final_sync, "see the replication job's error; the appliance must be connected"),
            Step(
                "snapshot_volumes",
                self.snapshot_volumes,
                "check the volumes' primary storage and snapshot limits in CloudStack",
                OUTAGE,
            ),
            Step(
                "detach_from_oma",
                self.detach_from_oma,
                "check the volume in CloudStack (it must be attached to the OMA VM or to none)",
                OUTAGE,
            ),
            Step(
                "deploy_vm",
                self.deploy_vm,
                "check the service offering, the template, the networks' capacity and the static IPs in the network "
                "mappings",
                OUTAGE,
            ),
            Step(
                "remove_template_root",
                self.remove_template_root,
                "check the template's root volume of the target VM in CloudStack",
                OUTAGE,
            ),
            Step(
                "attach_volumes",
                self.attach_volumes,
                "check that the volumes are not attached elsewhere and the target VM is stopped",
                OUTAGE,
            ),
            Step(
                "inject_drivers",
                self.inject_drivers,
                "see the command's output above; fix the command (--driver-injection-command)",
            ),
            Step("start_vm", self.start_vm, "check host capacity and the CloudStack events of the target VM", OUTAGE),
            Step("verify_running", self.verify_running, "check the target VM in CloudStack", OUTAGE),
        ]

    def _undo(self) -> list[FailoverStep]:
        """The steps of a cleanup and a rollback (undo_steps.py)."""
        return [
            Step(
                "stop_vm",
                self.stop_vm,
                "check the target VM in CloudStack (it may be stuck Starting or Stopping)",
                OUTAGE,
            ),
            Step("detach_from_vm", self.detach_from_vm, "check the volumes' attachments in CloudStack", OUTAGE),
            Step("destroy_vm", self.destroy_vm, "check the target VM in CloudStack", OUTAGE),
            Step(
                "revert_volumes",
                self.revert_volumes,
                "check the snapshot in CloudStack (it must be BackedUp and its volume detached)",
                OUTAGE,
            ),
            Step("delete_snapshots", self.delete_snapshots, "check the snapshots in CloudStack", OUTAGE),
            Step(
                "release_volumes",
                self.release_volumes,
                "check the volumes' attachments in CloudStack and the NBD exports (ListNbdExports)",
                OUTAGE,
            ),
            Step(
                "power_on_source",
                self.power_on_source,
                "check that the appliance is connected; the source can also be powered on in vCenter",
            ),
        ]

    def step(self, name: str) -> FailoverStep:
        return self.declared[name]
