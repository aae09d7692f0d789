"""The OMA's commands to the agent, each answered with a vma.v1.CommandResult (registered on the StreamClient).

- `start_replication`: accepted at once (SUCCEEDED) and run as a task; a job already running or completed here is
  acknowledged again without a second run.
- `cancel_job`: stops the copy (in-flight writes drain) and answers with a JobCancelled event.
- `power_off` / `power_on`: sets the fake VM's power state, answers with a PowerResult.
- `discover`: answers with a DiscoveryResult of the VMs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from oma.common.v1 import jobs_pb2
from vma.v1 import stream_pb2
from vma_client_stubs.agent.discovery import power_state_proto
from vma_client_stubs.agent.jobstate import DiskRecord, JobRecord
from vma_client_stubs.agent.messages import JobMessages
from vma_client_stubs.agent.runs import JobRunner
from vma_client_stubs.agent.vcenter import DiskNotFound, FakeVCenter, VmNotFound
from vma_client_stubs.stream_client import StreamClient


class AgentCommands:
    """The command handlers of one agent: they read and update its jobs and records, and launch runs."""

    def __init__(
        self,
        vcenter: FakeVCenter,
        messages: JobMessages,
        *,
        jobs: dict[str, JobRunner],
        records: dict[str, JobRecord],
        launch: Callable[[JobRecord], None],
        log: Any,
    ) -> None:
        self.vcenter = vcenter
        self.messages = messages
        self.jobs = jobs
        self.records = records
        self.launch = launch
        self.log = log

    def register(self, client: StreamClient) -> None:
        client.on_command("start_replication", self.start)
        client.on_command("cancel_job", self.cancel)
        client.on_command("power_off", self.power_off)
        client.on_command("power_on", self.power_on)
        client.on_command("discover", self.discover)

    async def start(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        start = command.start_replication
        log = self.log.bind(job_id=start.job_id, command_id=command.command_id)
        if not start.job_id or not start.disks:
            return _rejected("start_replication needs a job id and at least one disk")
        try:
            vm = await asyncio.to_thread(self.vcenter.get_vm, start.vm_uuid)
            for target in start.disks:
                vm.disk(target.disk_key)
        except (VmNotFound, DiskNotFound) as exc:
            return _rejected(str(exc))
        runner = self.jobs.get(start.job_id)
        if runner is not None and runner.running:
            log.info("job {job} is already running; start command acknowledged", job=start.job_id)
            return _succeeded("already running")
        record = self.records.get(start.job_id)
        if record is not None and record.status == "completed":
            return _succeeded("the job already completed on this appliance")
        if record is None or record.status != "running":
            record = JobRecord(job_id=start.job_id, vm_uuid=start.vm_uuid, command=start)
        else:
            record.command = start
        for target in start.disks:
            disk = record.disks.setdefault(target.disk_id, DiskRecord(disk_id=target.disk_id))
            if target.resume_token and not disk.acked_token:
                disk.acked_token = target.resume_token
        record.status = "running"
        self.records[record.job_id] = record
        await self.messages.save(record)
        self.launch(record)
        log.info("accepted job {job}: {n} disk(s) of VM {vm}", job=start.job_id, n=len(start.disks), vm=vm.name)
        return _succeeded("replication started")

    async def cancel(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        job_id = command.cancel_job.job_id
        runner = self.jobs.get(job_id)
        if runner is not None and runner.running:
            runner.stop_reason = "cancel"
            runner.cancel.set()
            return _succeeded("cancelling")
        record = self.records.get(job_id)
        if record is not None and record.status == "completed":
            return _succeeded("the job had already completed")
        cancelled = stream_pb2.JobCancelled(detail="the job was not running here")
        await self.messages.emit(job_id, stream_pb2.JobEvent(cancelled=cancelled))
        return _succeeded("not running")

    async def _power(self, vm_uuid: str, on: bool) -> stream_pb2.CommandResult:
        try:
            vm = await asyncio.to_thread(self.vcenter.set_power, vm_uuid, on)
        except VmNotFound as exc:
            return _rejected(str(exc))
        self.log.info("VM {name} powered {state}", name=vm.name, state=vm.power_state)
        return stream_pb2.CommandResult(
            outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED,
            power=stream_pb2.PowerResult(power_state=power_state_proto(vm.power_state)),
        )

    async def power_off(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        return await self._power(command.power_off.vm_uuid, False)

    async def power_on(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        return await self._power(command.power_on.vm_uuid, True)

    async def discover(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        def listed() -> list[Any]:
            return [self.vcenter.to_proto(vm) for vm in self.vcenter.list_vms(command.discover.name_filter)]

        vms = await asyncio.to_thread(listed)
        return stream_pb2.CommandResult(
            outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED,
            discovery=stream_pb2.DiscoveryResult(virtual_machines=vms),
        )


def _succeeded(detail: str) -> stream_pb2.CommandResult:
    return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail=detail)


def _rejected(detail: str) -> stream_pb2.CommandResult:
    return stream_pb2.CommandResult(
        outcome=stream_pb2.COMMAND_OUTCOME_REJECTED, error_class=jobs_pb2.ERROR_CLASS_INVALID_COMMAND, detail=detail
    )
