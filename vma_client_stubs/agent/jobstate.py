"""What the agent remembers of its replication jobs across restarts: one small JSON file per job.

A record holds the start command, the snapshot the copy reads, and per disk the last resume token the OMA has
*acknowledged* (durably stored), whether the disk completed, and the sequences of reports sent but not yet acked with
the tokens they carried. An ack (JobAck, a Welcome cursor, a start command's last_applied_sequence) promotes the
tokens of the newest report at or below the acked sequence to `acked_token`. After a crash the copy resumes from
`acked_token`, so nothing the OMA acknowledged is copied again.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vma.v1 import stream_pb2

MAX_PENDING = 1_000  # sent-but-unacked reports remembered per job (older ones are dropped: resume is then earlier)


@dataclass
class DiskRecord:
    disk_id: str
    acked_token: str = ""
    completed: bool = False
    change_id: str = ""
    mode: str = ""
    full_copy_reason: str = ""
    bytes_total: int = 0
    bytes_written: int = 0  # data bytes written to the target for this disk, over every run of the job
    bytes_zeroed: int = 0


@dataclass
class JobRecord:
    job_id: str
    vm_uuid: str
    command: stream_pb2.StartReplicationCommand
    status: str = "running"  # running | completed | failed | cancelled | abandoned
    snapshot_id: str = ""
    started_event: bool = False
    detail: str = ""
    runs: int = 0  # how many times the job was started or resumed on this appliance
    disks: dict[str, DiskRecord] = field(default_factory=dict)
    pending: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (sequence, disk id → token)

    @property
    def bytes_written(self) -> int:
        return sum(d.bytes_written for d in self.disks.values())

    def note_sent(self, sequence: int, tokens: dict[str, str]) -> None:
        self.pending.append((sequence, dict(tokens)))
        if len(self.pending) > MAX_PENDING:
            del self.pending[: len(self.pending) - MAX_PENDING]

    def acked(self, sequence: int) -> bool:
        """The OMA durably stored everything up to `sequence`: promote that report's tokens. True if anything
        changed."""
        best: dict[str, str] | None = None
        keep = []
        for seq, tokens in self.pending:
            if seq <= sequence:
                best = tokens
            else:
                keep.append((seq, tokens))
        changed = len(keep) != len(self.pending)
        self.pending = keep
        if best is not None:
            for disk_id, token in best.items():
                disk = self.disks.get(disk_id)
                if disk is not None and not disk.completed and token:
                    disk.acked_token = token
        return changed

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "vm_uuid": self.vm_uuid,
            "command": base64.b64encode(self.command.SerializeToString()).decode(),
            "status": self.status,
            "snapshot_id": self.snapshot_id,
            "started_event": self.started_event,
            "detail": self.detail,
            "runs": self.runs,
            "disks": {k: vars(v) for k, v in self.disks.items()},
            "pending": [[s, t] for s, t in self.pending],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobRecord:
        command = stream_pb2.StartReplicationCommand()
        command.ParseFromString(base64.b64decode(raw["command"]))
        return cls(
            job_id=raw["job_id"],
            vm_uuid=raw["vm_uuid"],
            command=command,
            status=raw.get("status", "running"),
            snapshot_id=raw.get("snapshot_id", ""),
            started_event=bool(raw.get("started_event", False)),
            detail=raw.get("detail", ""),
            runs=int(raw.get("runs", 0)),
            disks={k: DiskRecord(**v) for k, v in raw.get("disks", {}).items()},
            pending=[(int(s), dict(t)) for s, t in raw.get("pending", [])],
        )


class JobStore:
    """`<state_dir>/jobs/<job_id>.json`, written atomically (temp file, fsync, rename)."""

    def __init__(self, state_dir: Path, *, fsync: bool = True) -> None:
        self.dir = Path(state_dir) / "jobs"
        self.fsync = fsync
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"bad job id {job_id!r}")
        return self.dir / f"{job_id}.json"

    def save(self, record: JobRecord) -> None:
        self.write(record.job_id, record.to_json())

    def write(self, job_id: str, snapshot: dict[str, Any]) -> None:
        """Write a snapshot taken with `JobRecord.to_json()` (take it on the thread that mutates the record)."""
        data = json.dumps(snapshot, separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(prefix=".job.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, self.path(job_id))
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def load_all(self) -> list[JobRecord]:
        records = []
        for path in sorted(self.dir.glob("*.json")):
            records.append(JobRecord.from_json(json.loads(path.read_text(encoding="utf-8"))))
        return records
