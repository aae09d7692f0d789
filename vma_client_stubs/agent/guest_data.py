"""Guest data for fake disks: mixed content (random, text, repeated bytes, zeros) and sparse images of it."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

MIB = 1 << 20
BLOCK = 4096

_TEXT = b"The quick brown fox jumps over the lazy dog. 0123456789 OMA/VMA replication test data.\n"


def varied_bytes(
    rng: random.Random, length: int, zero_share: float = 0.0, part_blocks: Sequence[int] = (1, 4, 16, 64)
) -> bytes:
    """`length` bytes of mixed content: random, text, repeated byte, and (with `zero_share`) all-zero blocks."""
    parts = []
    done = 0
    while done < length:
        n = min(length - done, rng.choice(part_blocks) * BLOCK)
        roll = rng.random()
        if roll < zero_share:
            parts.append(bytes(n))
        elif roll < zero_share + (1 - zero_share) * 0.6:
            parts.append(rng.randbytes(n))
        elif roll < zero_share + (1 - zero_share) * 0.85:
            parts.append((_TEXT * (n // len(_TEXT) + 1))[:n])
        else:
            parts.append(bytes([rng.randrange(1, 256)]) * n)
        done += n
    return b"".join(parts)


def fill_varied(path: Path, size: int, rng: random.Random) -> None:
    """Fill a fresh sparse image 1 MiB region at a time: ~35 % holes, allocated zeros, half-filled regions and
    varied data; the first and last MiB always hold data."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, MIB):
            n = min(MIB, size - offset)
            roll = rng.random()
            last = offset + n >= size
            if offset == 0 or last:
                os.pwrite(fd, varied_bytes(rng, n), offset)
            elif roll < 0.35:
                continue  # hole
            elif roll < 0.45:
                os.pwrite(fd, bytes(n), offset)  # allocated, all zeros
            elif roll < 0.60:
                half = (n // 2) - (n // 2) % BLOCK
                os.pwrite(fd, varied_bytes(rng, half), offset + rng.choice((0, n - half)))
            else:
                os.pwrite(fd, varied_bytes(rng, n, zero_share=0.05), offset)
    finally:
        os.close(fd)
