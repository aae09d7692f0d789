"""What a job tells the OMA, in order: its record persisted, events, and progress reports numbered per job.

One lock per job keeps a sequence reserved for a report and the report's submission together, so the StreamClient
receives each job's messages in sequence order; the record is written (in a worker thread, in call order) before a
report that names its resume tokens is handed over.
"""

from __future__ import annotations

import asyncio
import time

from google.protobuf import duration_pb2

from oma.common.v1 import jobs_pb2
from vma.v1 import stream_pb2
from vma_client_stubs.agent.jobstate import JobRecord, JobStore
from vma_client_stubs.agent.runs import JobRunner
from vma_client_stubs.stream_client import StreamClient


class JobMessages:
    """The agent's one way to persist a job record and send a job's events and progress reports."""

    def __init__(self, client: StreamClient, store: JobStore) -> None:
        self.client = client
        self.store = store
        self._message_locks: dict[str, asyncio.Lock] = {}
        self._save_locks: dict[str, asyncio.Lock] = {}

    async def save(self, record: JobRecord) -> None:
        """Persist a record: snapshot it here (the loop owns it), write in a thread, in call order."""
        data = record.to_json()
        async with self._save_locks.setdefault(record.job_id, asyncio.Lock()):
            await asyncio.to_thread(self.store.write, record.job_id, data)

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._message_locks.setdefault(job_id, asyncio.Lock())

    async def emit(self, job_id: str, event: stream_pb2.JobEvent) -> None:
        event.job_id = job_id
        async with self._lock(job_id):
            await self.client.emit_event(event)

    async def report(self, runner: JobRunner) -> None:
        """Send the job's progress now: its figures, each disk's, and the resume tokens the report carries."""
        record = runner.record
        report, tokens = progress_report(runner, time.monotonic())
        async with self._lock(record.job_id):
            report.sequence = self.client.next_sequence(record.job_id)
            record.note_sent(report.sequence, tokens)
            await self.save(record)
            await self.client.report_progress(report)
        runner.latest = report


def progress_report(runner: JobRunner, now: float) -> tuple[stream_pb2.ProgressReport, dict[str, str]]:
    """The job's report at `now` (throughput since the previous one) and the resume token of each unfinished disk."""
    done = sum(d.done for d in runner.disks)
    total = sum(d.total for d in runner.disks)
    throughput = 0.0
    if runner.rate is not None and now > runner.rate[0]:
        throughput = max(0.0, (done - runner.rate[1]) / (now - runner.rate[0]))
    runner.rate = (now, done)
    report = stream_pb2.ProgressReport(
        job_id=runner.record.job_id,
        phase=runner.phase,  # type: ignore[arg-type]
        current_operation=runner.operation,
        bytes_done=done,
        bytes_total=total,
        throughput_bytes_per_second=int(throughput),
    )
    if throughput > 0 and total > done:
        report.eta.CopyFrom(duration_pb2.Duration(seconds=int((total - done) / throughput)))
    tokens = {}
    for disk in runner.disks:
        disk_done = disk.done
        disk.throughput = 0.0
        if disk.rate is not None and now > disk.rate[0] and disk.phase == jobs_pb2.COPY_PHASE_COPYING:
            disk.throughput = max(0.0, (disk_done - disk.rate[1]) / (now - disk.rate[0]))
        disk.rate = (now, disk_done)
        report.disks.append(
            stream_pb2.DiskProgress(
                disk_id=disk.record.disk_id,
                bytes_done=min(disk_done, disk.total),
                bytes_total=disk.total,
                throughput_bytes_per_second=int(disk.throughput),
                phase=disk.phase,  # type: ignore[arg-type]
                mode=disk.mode,  # type: ignore[arg-type]
                resume_token=disk.token,
            )
        )
        if disk.token and not disk.record.completed:
            tokens[disk.record.disk_id] = disk.token
    return report, tokens
