"""SQLite serves one OMA process: the first to open a database for serving (or migrating) holds it until it exits.

Several OMA processes share one PostgreSQL (issue #18); on SQLite a second one would race the first on job state
kept in memory (the job cache, the durable cursors, the stream sessions), so it is refused with a message that says
who holds the database and what to do. The hold is an exclusive `flock` on `<database>.owner` beside the database
file, which the kernel drops when the process ends in any way — a SIGKILLed OMA leaves nothing that blocks its
restart. The file says who holds it (pid, host, what for, since when) for the message of the one refused.

Short-lived tools that only add a row (`oma-server create-token`) do not take it: SQLite's own locking serialises
their one write with the server's. `flock` is advisory and local: a database on a network file system shared
between hosts is not protected (the README says to keep SQLite on local disk).
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from oma_server.errors import FailedPrecondition

OWNER_SUFFIX = ".owner"


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///path` URL; None for any other database."""
    parsed = urlparse(url)
    return Path(parsed.path) if parsed.scheme == "sqlite" and parsed.path else None


class SqliteOwnership:
    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + OWNER_SUFFIX)
        self._fd: int | None = None

    def acquire(self, purpose: str) -> None:
        """Hold the database for this process, or raise FailedPrecondition naming the process that holds it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FailedPrecondition(
                f"the SQLite database {self.database} is in use by {holder}; SQLite serves one OMA process: stop "
                "that one first, or run several OMA processes on one PostgreSQL (--database postgresql://...)",
                reason="DATABASE_IN_USE",
                database=str(self.database),
            ) from None
        since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"oma-server pid {os.getpid()} on {socket.gethostname()} ({purpose}, since {since})\n".encode(), 0
        )
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
