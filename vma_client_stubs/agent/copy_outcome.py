"""What a disk copy reports: its progress (a thread-safe snapshot's fields), its result, and its classified failures
(`error_class` is the vma.v1.ErrorClass name suffix the agent sends)."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

#: errno values of an NBD connection that is gone (its server died, restarted or moved), not of a write it refused
CONNECTION_GONE = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED})


class CopyError(Exception):
    """Base of copy failures. `error_class` is the vma.v1.ErrorClass name suffix."""

    error_class = "INTERNAL"


class TargetUnreachable(CopyError):
    error_class = "TARGET_UNREACHABLE"


class TargetWriteFailed(CopyError):
    error_class = "TARGET_WRITE_FAILED"


class TargetConnectionLost(TargetWriteFailed):
    """The connection to the export went away mid-copy, or its requests went unanswered for 30 s (a server whose
    host died sends no reset); nothing says the data is bad: the agent reconnects, to the same address or the one
    the OMA moves the export to, and resumes from the acknowledged point (job_run.JobExecutor)."""


def write_failure(message: str, code: int | None) -> TargetWriteFailed:
    """The failure of an NBD request or flush that ended with errno `code`."""
    return (TargetConnectionLost if code in CONNECTION_GONE else TargetWriteFailed)(message)


class TargetTooSmall(TargetWriteFailed):
    """The export is smaller than the extents to write (the source disk grew and the volume did not)."""


class SourceReadFailed(CopyError):
    error_class = "SOURCE_UNAVAILABLE"


class InvalidResumeToken(CopyError):
    """The token is malformed or belongs to another plan; the copy must start over."""


class CopyCancelled(CopyError):
    """The copy stopped because it was cancelled; `result` holds what was done."""

    def __init__(self, message: str, result: CopyResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class CopyProgress:
    """A consistent picture of a running copy (absolute figures for this copy of the disk)."""

    bytes_total: int = 0
    bytes_done: int = 0  # plan bytes whose writes completed (contiguous prefix)
    bytes_written: int = 0  # data bytes sent with WRITE by this run (not skipped, not zeroed)
    bytes_zeroed: int = 0  # bytes made zero with WRITE_ZEROES by this run
    bytes_skipped: int = 0  # zero bytes not sent at all (fresh target)
    resume_from: int = 0  # bytes of the plan already done when this run started
    resume_token: str = ""  # durable resume point (flushed when the target supports flush)
    elapsed_s: float = 0.0

    @property
    def throughput(self) -> float:
        """Plan bytes per second processed by this run."""
        return (self.bytes_done - self.resume_from) / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class CopyResult(CopyProgress):
    flushed: bool = False
    requests: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
