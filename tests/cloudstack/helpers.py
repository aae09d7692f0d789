"""Small synchronous disk helpers for tests (blocking I/O kept out of the async test bodies)."""

from __future__ import annotations

import os
from pathlib import Path


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
