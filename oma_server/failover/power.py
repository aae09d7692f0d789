"""Powering a source VM on or off on the operator's request: a one-step job of the failover engine.

The step is the one live failover and rollback use (`power_off_source`, `power_on_source`): a command through the
appliance's durable outbox, its answer awaited, both in the job log. Being a job, it is listed, watched, resumed
after a restart and found by GetJob like every other. It does not claim the VM context (replication may go on), but
it is refused while a failover, cleanup or rollback runs on the VM (they decide the source's power themselves), and
powering on is refused while the VM runs in CloudStack after a live failover.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from loguru import logger

from oma_server.db.database import Database
from oma_server.db.models import VmContext
from oma_server.errors import FailedPrecondition, Unavailable, job_already_active
from oma_server.failover.state_machine import FailoverJobState, FailoverKind
from oma_server.failover.store import FailoverJobStore, open_failover_of
from oma_server.joblog import note
from oma_server.vm_contexts.service import vm_not_found
from oma_server.vm_contexts.state_machine import VmStatus


class SourcePower:
    def __init__(
        self,
        db: Database,
        store: FailoverJobStore,
        run: Callable[[str], None],
        appliance_connected: Callable[[str], Awaitable[bool]],
    ) -> None:
        self.db = db
        self.store = store
        self.run = run  # starts the job's runner (the failover workflow's)
        self.appliance_connected = appliance_connected

    async def power_on(self, vm_context_id: str, request_id: str = "") -> FailoverJobState:
        return await self._start(vm_context_id, FailoverKind.POWER_ON_SOURCE, request_id)

    async def power_off(self, vm_context_id: str, request_id: str = "") -> FailoverJobState:
        return await self._start(vm_context_id, FailoverKind.POWER_OFF_SOURCE, request_id)

    async def _start(self, vm_context_id: str, kind: FailoverKind, request_id: str) -> FailoverJobState:
        vm = await self.db.run(VmContext.get_or_none, VmContext.id == vm_context_id)
        if vm is None:
            raise vm_not_found(vm_context_id)
        on = kind == FailoverKind.POWER_ON_SOURCE
        if on and vm.status == VmStatus.FAILED_OVER_LIVE.value:
            raise FailedPrecondition(
                f"VM {vm.name} runs in CloudStack after a live failover; powering its source on would run it twice "
                "— roll the failover back first (RollbackFailover, which can power the source on itself)",
                reason="SOURCE_POWER_ON_UNSAFE",
                vm_context_id=vm_context_id,
            )
        if not await self.appliance_connected(vm.appliance_id):
            raise Unavailable(
                f"appliance {vm.appliance_id} of VM {vm.name} is not connected; the source VM cannot be reached — "
                "start or reconnect the VMA and ask again",
                reason="APPLIANCE_DISCONNECTED",
                appliance_id=vm.appliance_id,
            )
        verb = "power on" if on else "power off"

        def claim(job: FailoverJobState) -> None:
            running = open_failover_of(vm_context_id, excluding=job.id)
            if running is not None:
                why = (
                    "it holds the VM while it reads the replicas at rest"
                    if running.kind == FailoverKind.VERIFY
                    else "it decides the source's power itself"
                )
                raise job_already_active(
                    f"VM {vm.name} has an active {running.kind.value} job {running.id}; {why} — wait for it",
                    running.id,
                )
            note(job.id, "start", f"{verb} of source VM {vm.name} ({vm.vm_uuid}) requested")

        job = await self.store.create(
            vm_context_id,
            kind,
            target_vm_name=vm.name,
            params={"power_on_source": on},
            request_id=request_id,
            in_tx=claim,
        )
        logger.bind(job_id=job.id, vm_context_id=vm_context_id).info("source {verb} requested", verb=verb)
        self.run(job.id)
        return job
