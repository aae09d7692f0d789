"""What `make demo` (oma_server/demo.py) needs besides its steps: waiting for the processes it starts, its
workspace, and the source disks' digests it checks the OMA's against."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class DemoFailed(Exception):
    pass


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoFailed(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise DemoFailed(f"{what} did not start listening in time")


def wait_written(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    """Until `path` exists with content (a file the server writes during its start), or the server exits."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        if proc.poll() is not None:
            raise DemoFailed(f"{what} exited with {proc.returncode} before writing {path.name}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what} did not write {path} in time")
        time.sleep(0.05)


def blkhash(path: Path, block_size: int, algorithm: str, capacity: int) -> str:
    """H(H(b1) || ... || H(bN)) over `capacity` bytes of `path` (zeros past its end), as ovirt-imageio computes it."""
    if not block_size or not algorithm:
        return ""
    outer = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for offset in range(0, capacity, block_size):
            size = min(block_size, capacity - offset)
            block = f.read(size)
            outer.update(hashlib.new(algorithm, block + bytes(size - len(block))).digest())
    return outer.hexdigest()


def workspace() -> contextlib.AbstractContextManager[str]:
    """OMA_DEMO_DIR keeps everything the demo made (logs, data dir, images) in that directory for a look afterwards;
    by default it goes into a temporary directory removed at the end."""
    keep = os.environ.get("OMA_DEMO_DIR", "")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return contextlib.nullcontext(keep)
    return tempfile.TemporaryDirectory(prefix="oma-demo-")
