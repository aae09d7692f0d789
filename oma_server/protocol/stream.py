"""What an appliance and the OMA tell each other on the stream, as domain values (no wire types here).

`oma_server.wire.stream_codec` decodes each wire message into one of these, checked whole (known enum values, ids
and texts within their limits, numbers in range, durations sane) before anything of it is applied; a message that
fails is answered with a StreamError and changes nothing. What can only be checked against state (the job exists
and is the appliance's, the disks belong to it, bytes within the stored totals) is checked by the job store, also
before it applies anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from oma_server.protocol.commands import QueuedCommand

# Limits of what a message may carry: the widths of the columns the values are stored in (PostgreSQL refuses a longer
# value, and a refused batch write would hold back every job's acks). A message over a limit is refused, never cut:
# the appliance hears which field to fix.
MAX_ID_CHARS = 64
MAX_CHANGE_ID_CHARS = 255
MAX_OPERATION_CHARS = 512
MAX_DETAIL_CHARS = 4096
MAX_RESUME_TOKEN_CHARS = 1024
MAX_DISKS_PER_REPORT = 256
MAX_RUNNING_JOBS = 4096
# The byte ranges a disk's completion may name (an appliance with more merges neighbours).
MAX_COPIED_EXTENTS = 65_536
# The block construction of the source's hashes (vma.v1.BlockHashes) and of the OMA's maps (oma_server/integrity:
# why these), and the hashes one event may carry (1 MiB of them).
HASH_ALGORITHM = "sha256"
HASH_BLOCK_SIZE = 2 * 1024 * 1024
HASH_SIZE = 32
MAX_HASHED_BLOCKS_PER_EVENT = 32_768
# Byte counts and sequences are stored in signed 64-bit columns.
MAX_INT64 = 2**63 - 1
# An ETA beyond ten years is not an estimate.
MAX_ETA_SECONDS = 10 * 365 * 24 * 3600


class EventKind(StrEnum):
    STARTED = "started"
    DISK_COMPLETED = "disk_completed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BLOCK_HASHES = "block_hashes"


@dataclass(frozen=True, slots=True)
class DiskProgress:
    disk_id: str
    bytes_done: int
    bytes_total: int  # 0: not reported (the stored total stands)
    throughput_bytes_per_second: int
    phase: str  # "" when not reported
    mode: str  # "" when not reported
    resume_token: str


@dataclass(frozen=True, slots=True)
class ProgressReport:
    job_id: str
    sequence: int
    phase: str
    current_operation: str
    bytes_done: int
    bytes_total: int  # 0: not reported (the stored total stands)
    throughput_bytes_per_second: int
    eta_seconds: float | None
    disks: tuple[DiskProgress, ...]


@dataclass(frozen=True, slots=True)
class JobEvent:
    job_id: str
    sequence: int
    kind: EventKind
    disk_id: str = ""  # disk_completed; failed (optional: the disk that failed)
    change_id: str = ""  # disk_completed
    mode: str = ""  # disk_completed
    error_class: str = ""  # failed
    detail: str = ""  # failed, cancelled
    # disk_completed: the (offset, length) byte ranges the copy covered, sorted and disjoint; None when not reported
    copied_extents: tuple[tuple[int, int], ...] | None = None
    # block_hashes: (first block, count, count x 32 bytes of SHA-256, or b"" for all-zero blocks), ascending, disjoint
    hash_runs: tuple[tuple[int, int, bytes], ...] = ()
    # block_hashes: (offset, length, SHA-256) of pieces of blocks copied in part, ascending, disjoint
    piece_hashes: tuple[tuple[int, int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Hello:
    appliance_id: str
    credential: str
    agent_version: str
    capabilities: tuple[str, ...]
    last_command_id: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    running_job_ids: tuple[str, ...]


# ---- from the OMA -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Welcome:
    session_id: str
    heartbeat_interval_s: float
    server_version: str
    cursors: tuple[tuple[str, int], ...]  # (job id, last durably applied sequence) of every open job


@dataclass(frozen=True, slots=True)
class JobAck:
    job_id: str
    sequence: int


@dataclass(frozen=True, slots=True)
class CommandResultAck:
    command_id: str


@dataclass(frozen=True, slots=True)
class StreamError:
    code: str  # INVALID_MESSAGE, UNKNOWN_JOB, FOREIGN_JOB, INVALID_STATE, UNKNOWN_COMMAND
    message: str
    job_id: str = ""
    sequence: int = 0
    command_id: str = ""


Outgoing = Welcome | JobAck | QueuedCommand | CommandResultAck | StreamError
