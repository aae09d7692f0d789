"""The OMA's commands to the agent, each answered with a vma.v1.CommandResult (registered on the StreamClient).

- `start_replication`: accepted at once (SUCCEEDED) and run as a task; a job already running or completed here is
  acknowledged again without a second run — a running job's disks take the command's NBD targets when they differ
  (the OMA moved the job's exports to another of its processes; their copies reconnect there).
- `cancel_job`: stops the copy (in-flight writes drain) and answers with a JobCancelled event.
- `set_bandwidth_limit`: the copy-rate limits in force, whole; applied to running copies at once (a command issued
  before the newest one applied is acknowledged and ignored).
- `power_off` / `power_on`, `discover`, `release_source`: about the source VM itself (`source_commands.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from vma.v1 import stream_pb2
from vma_client_stubs.agent.jobstate import DiskRecord, JobRecord
from vma_client_stubs.agent.messages import JobMessages
from vma_client_stubs.agent.rate_limit import BandwidthLimits
from vma_client_stubs.agent.runs import JobRunner
from vma_client_stubs.agent.source_commands import SourceCommands, rejected
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
        bandwidth: BandwidthLimits,
        log: Any,
    ) -> None:
        self.bandwidth = bandwidth
        self.vcenter = vcenter
        self.messages = messages
        self.jobs = jobs
        self.records = records
        self.launch = launch
        self.log = log

    def register(self, client: StreamClient) -> None:
        client.on_command("start_replication", self.start)
        client.on_command("cancel_job", self.cancel)
        client.on_command("set_bandwidth_limit", self.set_bandwidth_limit)
        source = SourceCommands(self.vcenter, self.log)
        for kind in ("power_off", "power_on", "discover", "release_source"):
            client.on_command(kind, getattr(source, kind))

    async def start(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        start = command.start_replication
        log = self.log.bind(job_id=start.job_id, command_id=command.command_id)
        if not start.job_id or not start.disks:
            return rejected("start_replication needs a job id and at least one disk")
        try:
            vm = await asyncio.to_thread(self.vcenter.get_vm, start.vm_uuid)
            for target in start.disks:
                vm.disk(target.disk_key)
        except (VmNotFound, DiskNotFound) as exc:
            return rejected(str(exc))
        runner = self.jobs.get(start.job_id)
        if runner is not None and runner.running:
            if moved := runner.retarget(start):
                await self.messages.save(runner.record)
                log.info("job {job}: disk(s) {d} now copy to their new NBD address", job=start.job_id, d=moved)
                return _succeeded(f"already running; {len(moved)} disk(s) moved to their new NBD target")
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

    async def set_bandwidth_limit(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        limits = command.set_bandwidth_limit
        issued_at = command.issued_at.ToDatetime()
        if not self.bandwidth.apply(limits.appliance_bytes_per_second, dict(limits.job_bytes_per_second), issued_at):
            return _succeeded("ignored: a newer limit is in force")
        self.log.bind(command_id=command.command_id).info(
            "bandwidth limits now {rates}", rates=describe_rates(self.bandwidth.rates())
        )
        return _succeeded(f"limits now {describe_rates(self.bandwidth.rates())}")


def describe_rates(rates: dict[str, float]) -> str:
    """`appliance 100.0 MiB/s, local unlimited, job j-1 20.0 MiB/s`."""
    shown = (f"{name} {f'{rate / 2**20:.1f} MiB/s' if rate > 0 else 'unlimited'}" for name, rate in rates.items())
    return ", ".join(shown)


def _succeeded(detail: str) -> stream_pb2.CommandResult:
    return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail=detail)
