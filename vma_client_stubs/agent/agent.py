"""The reference VMA agent: obeys the OMA's commands over the stream and copies fake-vCenter disks into NBD exports.

The agent is composed of one part per concern: `commands.py` (the command handlers), `job_run.py` (running a job:
snapshot, plan, parallel copies, events), `disk_plan.py` (a disk's full or incremental plan and resume point),
`messages.py` (persisting a job's record, numbering and sending its reports and events), `runs.py` (a run's live
state), `discovery.py` (the inventory as protobuf messages). This module builds them and holds the stream callbacks.

Resume: every running job is a `JobRecord` in the state dir. Each report's resume tokens are remembered under its
sequence; when the OMA acks a sequence (JobAck, Welcome cursor, a start command's last_applied_sequence) that report's
tokens become the disk's acknowledged resume point. After a crash the agent resumes each unfinished disk from its
acknowledged point, reading the same snapshot, so nothing the OMA acknowledged is copied again. Across a reconnect the
copy simply continues; the StreamClient resends what the OMA did not ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from loguru import logger

from vma.v1 import agent_service_pb2, stream_pb2
from vma_client_stubs.agent.commands import AgentCommands
from vma_client_stubs.agent.job_run import JobExecutor, snapshot_description
from vma_client_stubs.agent.jobstate import JobRecord, JobStore
from vma_client_stubs.agent.messages import JobMessages
from vma_client_stubs.agent.rate_limit import BandwidthLimits
from vma_client_stubs.agent.runs import CopyOptions, JobRunner
from vma_client_stubs.agent.vcenter import FakeVCenter
from vma_client_stubs.connection import Endpoint
from vma_client_stubs.identity import CertificateRenewer
from vma_client_stubs.stream_client import StreamClient

# The CLI, the tests and the benchmarks import these from here.
__all__ = ["CAPABILITIES", "Agent", "CopyOptions", "agent_version", "snapshot_description"]

CAPABILITIES = ("resume-from-extent", "cbt-incremental", "zero-skip", "copied-extents", "repair-extents")


def agent_version() -> str:
    try:
        return metadata.version("oma-control-plane")
    except metadata.PackageNotFoundError:
        version_file = Path(__file__).resolve().parents[2] / "VERSION.txt"
        return version_file.read_text().strip() if version_file.is_file() else "0.0.0+unknown"


class Agent:
    """A VMA: a StreamClient to the OMA, a fake vCenter, and the jobs it runs. `start()`, then `stop()`."""

    def __init__(
        self,
        *,
        oma: Endpoint,
        appliance_id: str,
        credential: str,
        vcenter: FakeVCenter,
        state_dir: Path,
        copy: CopyOptions | None = None,
        report_interval_s: float = 0.5,
        fsync: bool = True,
        client_options: dict[str, Any] | None = None,
        identity: CertificateRenewer | None = None,
    ) -> None:
        """With `identity` the agent dials the OMA's appliance port with its certificate (mutual TLS) and renews it
        while it runs; `oma` and `credential` then only matter for a deprecated credential hello."""
        self.vcenter = vcenter
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.copy_options = copy or CopyOptions()
        self.report_interval_s = report_interval_s
        self.appliance_id = appliance_id
        self.oma = oma
        self.identity = identity
        self.version = agent_version()
        self.store = JobStore(self.state_dir, fsync=fsync)
        self.log = logger.bind(appliance_id=appliance_id)
        self.client = StreamClient(
            identity.identity.appliance_endpoint if identity is not None else oma.target,
            appliance_id,
            "" if identity is not None else credential,
            agent_version=self.version,
            capabilities=CAPABILITIES,
            state_dir=self.state_dir,
            running_jobs=self.running_job_ids,
            on_ack=self._on_ack,
            on_welcome=self._on_welcome,
            on_stream_error=self._on_stream_error,
            fsync=fsync,
            channel_credentials=identity.channel_credentials if identity is not None else oma.credentials(),
            **(client_options or {}),
        )
        self.jobs: dict[str, JobRunner] = {}
        self.records: dict[str, JobRecord] = {}
        self.messages = JobMessages(self.client, self.store)
        self.bandwidth = BandwidthLimits(self.copy_options.max_bytes_per_second or 0.0)
        self.executor = JobExecutor(
            vcenter,
            self.messages,
            self.copy_options,
            report_interval_s=report_interval_s,
            limits=self.bandwidth,
            log=self.log,
        )
        self.commands = AgentCommands(
            vcenter,
            self.messages,
            jobs=self.jobs,
            records=self.records,
            launch=self._launch,
            bandwidth=self.bandwidth,
            log=self.log,
        )
        self.commands.register(self.client)
        self.connected_since: float | None = None
        self.resume_wait_s = 5.0  # how long a resumed job waits for the OMA's cursor before planning
        self._stopping = False

    @property
    def copies_running(self) -> int:
        return self.executor.copies_running

    @property
    def peak_copies(self) -> int:
        """The most disk copies of all jobs at once since start."""
        return self.executor.peak_copies

    # ---- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load persisted jobs, start the stream, and resume every job that was running."""
        records = await asyncio.to_thread(self.store.load_all)
        # libnbd's binding loads in 70-100 ms from a cold page cache: pay that now, not in the first job's first byte.
        with contextlib.suppress(ImportError):
            await asyncio.to_thread(importlib.import_module, "nbd")
        await self.client.start()
        if self.identity is not None:
            self.identity.start()
        if any(r.status == "running" for r in records):
            self.records.update({r.job_id: r for r in records})
            # The Welcome's cursors say what the OMA durably applied: wait for them before choosing resume points.
            with contextlib.suppress(Exception):
                await self.client.wait_connected(self.resume_wait_s)
        for record in records:
            self.records[record.job_id] = record
            if record.status == "running":
                self.log.bind(job_id=record.job_id).info(
                    "resuming job {job} after a restart (run {n})", job=record.job_id, n=record.runs + 1
                )
                self._launch(record)

    async def stop(self) -> None:
        """Stop the copies (they resume at the next start), persist, and close the stream."""
        self._stopping = True
        for runner in list(self.jobs.values()):
            runner.stop_reason = runner.stop_reason or "shutdown"
            runner.cancel.set()
        tasks = [r.task for r in self.jobs.values() if r.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.stop()
        if self.identity is not None:
            await self.identity.stop()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def running_job_ids(self) -> Iterable[str]:
        return [job_id for job_id, r in self.jobs.items() if r.task is not None and not r.task.done()]

    async def wait_job(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Wait until a job's task ended; returns its record."""
        runner = self.jobs.get(job_id)
        if runner is not None and runner.task is not None:
            await asyncio.wait_for(asyncio.shield(runner.task), timeout)
        return self.records[job_id]

    def job_stats(self, job_id: str) -> dict[str, Any]:
        """Per-disk figures of the job's latest run: resume point, bytes written in this run and over all runs."""
        record = self.records[job_id]
        runner = self.jobs.get(job_id)
        disks = {}
        for disk_id, disk in record.disks.items():
            run = next((d for d in runner.disks if d.record.disk_id == disk_id), None) if runner else None
            disks[disk_id] = {
                "mode": disk.mode,
                "completed": disk.completed,
                "change_id": disk.change_id,
                "bytes_total": disk.bytes_total,
                "bytes_written": disk.bytes_written,
                "bytes_zeroed": disk.bytes_zeroed,
                "bytes_written_this_run": run.bytes_written_run if run else 0,
                "resume_from": run.resume_from if run else 0,
                "full_copy_reason": disk.full_copy_reason,
            }
        return {
            "status": record.status,
            "runs": record.runs,
            "bytes_written": record.bytes_written,
            "peak_parallel_disks": runner.peak_copying if runner else 0,
            "disks": disks,
        }

    # ---- stream callbacks -----------------------------------------------------------------------------------
    async def _apply_ack(self, job_id: str, sequence: int) -> None:
        record = self.records.get(job_id)
        if record is None or sequence <= 0:
            return
        if record.acked(sequence):
            await self.messages.save(record)

    async def _on_ack(self, job_id: str, sequence: int, _progress: stream_pb2.ProgressReport | None) -> None:
        await self._apply_ack(job_id, sequence)

    async def _on_welcome(self, welcome: stream_pb2.Welcome) -> None:
        self.connected_since = time.time()
        for cursor in welcome.open_jobs:
            await self._apply_ack(cursor.job_id, cursor.last_applied_sequence)

    async def _on_stream_error(self, error: stream_pb2.StreamError) -> None:
        if error.code in (stream_pb2.STREAM_ERROR_CODE_UNKNOWN_JOB, stream_pb2.STREAM_ERROR_CODE_FOREIGN_JOB):
            runner = self.jobs.get(error.job_id)
            if runner is not None and runner.task is not None and not runner.task.done():
                self.log.bind(job_id=error.job_id).warning(
                    "the OMA does not accept job {job} ({msg}); abandoning it", job=error.job_id, msg=error.message
                )
                runner.stop_reason = "abandon"
                runner.cancel.set()

    # ---- jobs -----------------------------------------------------------------------------------------------
    def _launch(self, record: JobRecord) -> None:
        runner = JobRunner(record=record, disk_slots=asyncio.Semaphore(self.copy_options.disks_per_job))
        self.jobs[record.job_id] = runner
        runner.task = asyncio.create_task(self.executor.run(runner), name=f"job-{record.job_id}")

    # ---- local views (the vma.v1 service) -------------------------------------------------------------------
    def local_jobs(self) -> list[agent_service_pb2.LocalJob]:
        out = []
        for job_id, record in self.records.items():
            runner = self.jobs.get(job_id)
            running = runner is not None and runner.task is not None and not runner.task.done()
            job = agent_service_pb2.LocalJob(
                job_id=job_id,
                vm_uuid=record.vm_uuid,
                running=running,
                acked_sequence=self.client.acked_sequence(job_id),
            )
            if runner is not None and runner.latest is not None:
                job.latest.CopyFrom(runner.latest)
            out.append(job)
        return out
