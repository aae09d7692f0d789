"""Small helpers for tests: synchronous disk I/O (kept out of the async test bodies), simulator state."""

from __future__ import annotations

import os
from pathlib import Path

from oma_server.cloudstack.simulator import CloudStackSimulator


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def real_path(path: Path) -> str:
    return os.path.realpath(path)


def job_pending(sim: CloudStackSimulator, command_class: str) -> bool:
    """True while the simulator has an async job of this command (class name, e.g. DeployVMCmdByAdmin) running."""
    return any(
        job["jobstatus"] == 0 and str(job["cmd"]).rsplit(".", 1)[-1] == command_class for job in sim.state.jobs.values()
    )
