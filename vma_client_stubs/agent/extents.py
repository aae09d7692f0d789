"""Byte extents: (offset, length) pairs, merged and sorted, and the allocated extents of a sparse file."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

Extent = tuple[int, int]  # (offset, length) in bytes


def merge(extents: Iterable[Extent]) -> list[Extent]:
    """Sorted, non-overlapping, non-adjacent extents covering exactly the union of the input (empty ones dropped)."""
    out: list[list[int]] = []
    for offset, length in sorted(e for e in extents if e[1] > 0):
        if out and offset <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], offset + length)
            out[-1][1] = end - out[-1][0]
        else:
            out.append([offset, length])
    return [(o, n) for o, n in out]


def coalesce(extents: Iterable[Extent], limit: int) -> list[Extent]:
    """The merged extents, with neighbours joined (at a granularity that doubles from 4 KiB) until at most `limit`
    remain: the result covers the input and may cover more, never less."""
    out = merge(extents)
    grain = 4096
    while len(out) > limit:
        out = merge((o - o % grain, -(-(o + n) // grain) * grain - (o - o % grain)) for o, n in out)
        grain *= 2
    return out


def total(extents: Iterable[Extent]) -> int:
    return sum(n for _, n in extents)


def clip(extents: Iterable[Extent], size: int) -> list[Extent]:
    """The extents cut to [0, size)."""
    out = []
    for offset, length in extents:
        end = min(offset + length, size)
        if end > offset:
            out.append((offset, end - offset))
    return out


def complement(extents: Iterable[Extent], size: int) -> list[Extent]:
    """The parts of [0, size) not covered by the (merged) extents."""
    out: list[Extent] = []
    pos = 0
    for offset, length in merge(extents):
        if offset > pos:
            out.append((pos, offset - pos))
        pos = max(pos, offset + length)
    if pos < size:
        out.append((pos, size - pos))
    return out


def allocated_extents(path: os.PathLike[str] | str, align: int = 4096) -> list[Extent]:
    """The data (non-hole) extents of a file via SEEK_DATA/SEEK_HOLE, aligned outwards to `align` bytes."""
    size = os.path.getsize(path)
    out: list[Extent] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            start = data - data % align
            end = min(size, -(-hole // align) * align)
            out.append((start, end - start))
            pos = hole
    finally:
        os.close(fd)
    return merge(out)


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy a file keeping its holes: only allocated extents are copied (copy_file_range)."""
    size = os.path.getsize(src)
    extents = allocated_extents(src)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.truncate(size)
        for offset, length in extents:
            done = 0
            while done < length:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), length - done, offset + done, offset + done)
                if n == 0:
                    break
                done += n
