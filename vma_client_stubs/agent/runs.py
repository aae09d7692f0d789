"""A job's run on this appliance as it happens: the copy options, each disk's plan and live figures, the job's
phase and stop flag, and the classified failure a run ends with. Plain state, no I/O."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from oma.common.v1 import jobs_pb2
from vma.v1 import stream_pb2
from vma_client_stubs.agent.copier import CopyProgress, Plan
from vma_client_stubs.agent.jobstate import DiskRecord, JobRecord


class JobFailure(Exception):
    """A job failed with a classified cause (a vma.v1.ErrorClass name suffix) concerning one disk or the job."""

    def __init__(self, error_class: str, detail: str, disk_id: str = "") -> None:
        super().__init__(detail)
        self.error_class = error_class
        self.detail = detail
        self.disk_id = disk_id


class TargetGone(JobFailure):
    """A disk's export could not be reached, or its connection was lost mid-copy: worth reconnecting (to a new target
    if the OMA names one) before the job fails with it."""


class Stopped(Exception):
    """The job's cancel flag was set (cancel command, shutdown, or abandon)."""


@dataclass
class CopyOptions:
    chunk_size: int = 2 << 20
    window: int = 8  # NBD requests in flight per connection
    connections: int = 4  # NBD connections per disk (when the export allows multi-conn)
    disks_per_job: int = 4  # disks of one job copied at once
    copies_per_appliance: int = 8  # disk copies of all jobs at once
    checkpoint_interval_s: float = 0.5
    max_bytes_per_second: float | None = None
    #: the appliance's certificate in libnbd's layout (ca-cert.pem, client-cert.pem, client-key.pem): every NBD
    #: connection then speaks TLS with it, on an nbd: URI too (None: as the URI says)
    nbd_certificates: Path | None = None
    #: how long a disk whose connection to its export was lost keeps reconnecting (to the address the OMA names
    #: meanwhile, `JobRunner.retarget`) before its job fails; every attempt that writes again starts the wait anew
    target_wait_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("window", "connections", "disks_per_job", "copies_per_appliance"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass
class DiskRun:
    """One disk in the current run of a job: its plan and live figures."""

    target: stream_pb2.DiskTarget
    record: DiskRecord
    key: int = 0
    snapshot_path: Path | None = None
    capacity: int = 0  # of the source disk in the snapshot
    plan: Plan | None = None
    fresh_target: bool = True
    mode: int = jobs_pb2.COPY_MODE_UNSPECIFIED
    phase: int = jobs_pb2.COPY_PHASE_PREPARING
    resume_from: int = 0
    progress: CopyProgress | None = None
    throughput: float = 0.0
    rate: tuple[float, int] | None = None  # (time, bytes done) at the previous report, for this disk's throughput
    bytes_written_run: int = 0  # data bytes written in this run of the job (this process)

    @property
    def total(self) -> int:
        return self.plan.total_bytes if self.plan is not None else self.record.bytes_total

    @property
    def done(self) -> int:
        if self.record.completed:
            return self.total
        if self.progress is not None:
            return self.progress.bytes_done
        return self.resume_from

    @property
    def token(self) -> str:
        if self.progress is not None:
            return self.progress.resume_token
        return self.record.acked_token


@dataclass
class JobRunner:
    record: JobRecord
    disks: list[DiskRun] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = ""  # "cancel" (the OMA asked) or "shutdown" (the agent stops; the job resumes later)
    phase: int = jobs_pb2.COPY_PHASE_PREPARING
    operation: str = "Preparing"
    latest: stream_pb2.ProgressReport | None = None
    started_at: float = field(default_factory=time.monotonic)
    rate: tuple[float, int] | None = None  # (time, bytes done) of the previous report, for throughput
    disk_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    copying: dict[str, str] = field(default_factory=dict)  # disk id -> "2000 (full)" while it copies
    peak_copying: int = 0  # most disks of this job copied at once in this run
    #: set when the OMA names new NBD targets for the job (`retarget`): a disk waiting to reconnect tries at once
    retargeted: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def check_stop(self) -> None:
        if self.cancel.is_set():
            raise Stopped()

    def retarget(self, command: stream_pb2.StartReplicationCommand) -> list[str]:
        """The OMA serves this job's exports at new addresses (another OMA process took its replicas over): each
        disk of the run takes its new NBD URI — in the record's command, so a restart of the agent uses it too — and
        a copy switches at its next connection. Returns the ids of the disks whose target changed."""
        new = {t.disk_id: t.nbd_uri for t in command.disks}
        changed = []
        for target in self.record.command.disks:
            uri = new.get(target.disk_id)
            if uri and uri != target.nbd_uri:
                target.nbd_uri = uri  # the DiskRun of this run holds the same message
                changed.append(target.disk_id)
        if changed:
            self.retargeted.set()
        return changed

    def disk_copying(self, disk_id: str, what: str) -> None:
        self.copying[disk_id] = what
        self.peak_copying = max(self.peak_copying, len(self.copying))
        self.operation = copying_operation(self.copying)

    def disk_copied(self, disk_id: str) -> None:
        self.copying.pop(disk_id, None)
        if self.copying:
            self.operation = copying_operation(self.copying)


def copying_operation(copying: dict[str, str]) -> str:
    """The job's current operation while disks copy: `Copying disk 2000 (full)` or `Copying disks 2000 (full), ...`."""
    items = sorted(copying.values())
    return f"Copying disk{'s' if len(items) > 1 else ''} {', '.join(items)}"
