"""Backing files of simulated volumes: sparse creation and a hole-preserving copy (reflink when possible)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

_FICLONE = 0x40049409  # linux/fs.h: share extents (btrfs, xfs, ...)
_CHUNK = 8 * 1024 * 1024


def create_sparse(path: Path, size_bytes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size_bytes)


def resize_sparse(path: Path, size_bytes: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size_bytes)


def _copy_data_ranges(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy only the data extents (SEEK_DATA/SEEK_HOLE) so holes stay holes."""
    offset = 0
    while offset < size:
        try:
            data = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after offset
                break
            raise
        hole = os.lseek(src_fd, data, os.SEEK_HOLE)
        pos = data
        while pos < hole:
            n = min(_CHUNK, hole - pos)
            try:
                copied = os.copy_file_range(src_fd, dst_fd, n, pos, pos)
            except OSError:
                chunk = os.pread(src_fd, n, pos)
                copied = os.pwrite(dst_fd, chunk, pos)
            if copied <= 0:
                raise OSError(f"short copy at offset {pos}")
            pos += copied
        offset = hole


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy src to dst (replacing it): a reflink if the filesystem can, else a sparse-aware copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    size = src.stat().st_size
    with open(src, "rb") as fs, open(tmp, "wb") as fd:
        cloned = False
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd.fileno(), _FICLONE, fs.fileno())
            cloned = True
        if not cloned:
            fd.truncate(size)
            _copy_data_ranges(fs.fileno(), fd.fileno(), size)
        fd.flush()
        os.fsync(fd.fileno())
    os.replace(tmp, dst)
