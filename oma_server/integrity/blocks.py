"""Fixed blocks, their hashes, the all-zero block constant and the disk digest.

The construction is ovirt-imageio's blkhash (`ovirt_imageio._internal.blkhash`): a disk is cut into `BLOCK_SIZE`
blocks (the last one may be shorter), each block is hashed, and the digest is the hash of the block hashes in disk
order, `H(H(b1) || H(b2) || ... || H(bN))`. A user checks a replica against its source with that independent tool:
`checksum(path, block_size=2 * 1024**2, algorithm="sha256", digest_size=None)["checksum"]` of the source disk is
the digest the OMA records (`bench/hashing.py` and tests/integrity check the two agree).

Choices, by measurement (`python -m bench.hashing`, figures in the README): SHA-256 from hashlib (this CPU's SHA
extensions: 1.0-1.6 GB/s per core, where hashlib's BLAKE2b gives 0.4-0.7 GB/s; the `blake3` package is faster
still but is not a hashlib algorithm, so ovirt-imageio could not check its digests, and it would be one more
dependency) over 2 MiB blocks (the hash rate is flat from 1 to 4 MiB; 2 MiB is the reference agent's copy chunk, so
the source side can hash what it holds without joining chunks, and a 1 TiB disk's map is 16 MiB).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from oma_server.protocol import stream

# The construction is the protocol's (the appliance hashes the source the same way): named here for the OMA's side.
ALGORITHM = stream.HASH_ALGORITHM
BLOCK_SIZE = stream.HASH_BLOCK_SIZE
HASH_SIZE = stream.HASH_SIZE

Extent = tuple[int, int]  # (offset, length) in bytes
BlockRange = tuple[int, int]  # (first block index, number of blocks)


def block_hash(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


#: the hash of an all-zero full block: holes and zeroed blocks are never hashed
ZERO_BLOCK_HASH = block_hash(bytes(BLOCK_SIZE))


def zero_hash(length: int) -> bytes:
    """The hash of `length` zero bytes (a full block's is the precomputed constant)."""
    return ZERO_BLOCK_HASH if length == BLOCK_SIZE else block_hash(bytes(length))


def block_count(capacity: int) -> int:
    return -(-capacity // BLOCK_SIZE)


def block_span(index: int, capacity: int) -> Extent:
    """The bytes of block `index` of a disk of `capacity` bytes."""
    offset = index * BLOCK_SIZE
    return offset, min(BLOCK_SIZE, capacity - offset)


def disk_digest(hashes: bytes) -> str:
    """The digest of a disk from its block hashes concatenated in disk order."""
    return hashlib.sha256(hashes).hexdigest()


def blocks_of(extents: Iterable[Extent], capacity: int) -> list[BlockRange]:
    """The block ranges that cover the byte extents (clipped to the disk), sorted and merged."""
    ranges: list[list[int]] = []
    for offset, length in sorted(extents):
        end = min(offset + length, capacity)
        if length <= 0 or offset >= end:
            continue
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        if ranges and first <= ranges[-1][0] + ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], last + 1 - ranges[-1][0])
        else:
            ranges.append([first, last + 1 - first])
    return [(f, n) for f, n in ranges]


def index_ranges(indices: Iterable[int]) -> list[BlockRange]:
    """Block indices as sorted, merged ranges."""
    ranges: list[list[int]] = []
    for index in sorted(set(indices)):
        if ranges and ranges[-1][0] + ranges[-1][1] == index:
            ranges[-1][1] += 1
        else:
            ranges.append([index, 1])
    return [(f, n) for f, n in ranges]


def block_extents(ranges: Sequence[BlockRange], capacity: int) -> list[Extent]:
    """The bytes of block ranges (the inverse of `blocks_of`, the last block as long as it is)."""
    return [(f * BLOCK_SIZE, min((f + n) * BLOCK_SIZE, capacity) - f * BLOCK_SIZE) for f, n in ranges]


def all_blocks(capacity: int) -> list[BlockRange]:
    count = block_count(capacity)
    return [(0, count)] if count else []


def count_of(ranges: Sequence[BlockRange]) -> int:
    return sum(n for _, n in ranges)


def describe(ranges: Sequence[BlockRange], limit: int = 8) -> str:
    """Block ranges as an operator reads them: "3, 10-12" (first `limit` ranges, then how many more)."""
    parts = [str(f) if n == 1 else f"{f}-{f + n - 1}" for f, n in ranges[:limit]]
    more = len(ranges) - limit
    return ", ".join(parts) + (f" and {more} more range(s)" if more > 0 else "")
