"""Block hashes and the disk digest: the construction ovirt-imageio's blkhash uses, checked against an independent
computation; the replica reader against the bytes it reads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from oma_server.integrity.blocks import (
    ALGORITHM,
    BLOCK_SIZE,
    HASH_SIZE,
    ZERO_BLOCK_HASH,
    all_blocks,
    block_count,
    blocks_of,
    describe,
    disk_digest,
)
from oma_server.integrity.reader import ReplicaReader
from vma_client_stubs.agent.extents import coalesce

MIB = 1 << 20


def imageio_checksum(data: bytes, block_size: int = BLOCK_SIZE) -> str:
    """What `ovirt_imageio._internal.blkhash.checksum(path, block_size, algorithm="sha256", digest_size=None)`
    computes: H(H(b1) || ... || H(bN)), the last block as long as it is."""
    outer = hashlib.new(ALGORITHM)
    for offset in range(0, len(data), block_size):
        outer.update(hashlib.new(ALGORITHM, data[offset : offset + block_size]).digest())
    return outer.hexdigest()


def disk_image(path: Path, size: int) -> bytes:
    """Data, a hole, a zeroed block written as data, and a short last block."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(os.urandom(BLOCK_SIZE + 4096))  # block 0 and the start of block 1
        f.seek(3 * BLOCK_SIZE)
        f.write(bytes(BLOCK_SIZE))  # block 3: zeros that are allocated
        f.seek(size - 100)
        f.write(b"tail" * 25)
    return path.read_bytes()


def test_zero_block_constant_is_the_hash_of_zeros() -> None:
    assert hashlib.sha256(bytes(BLOCK_SIZE)).digest() == ZERO_BLOCK_HASH
    assert len(ZERO_BLOCK_HASH) == HASH_SIZE


def test_reader_and_digest_match_the_independent_checksum(tmp_path: Path) -> None:
    size = 5 * BLOCK_SIZE + 12345  # six blocks, the last one short
    data = disk_image(tmp_path / "disk.raw", size)
    hashes = ReplicaReader(str(tmp_path / "disk.raw"), size, workers=3).hashes(all_blocks(size))
    assert sorted(hashes) == list(range(block_count(size))) == list(range(6))
    for index, value in hashes.items():
        assert value == hashlib.sha256(data[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]).digest()
    assert hashes[2] == hashes[3] == ZERO_BLOCK_HASH  # a hole and zeros written as data hash alike
    digest = disk_digest(b"".join(hashes[i] for i in range(6)))
    assert digest == imageio_checksum(data)
    assert digest != imageio_checksum(data, MIB)  # the block size is part of the digest


def test_reader_reads_only_the_blocks_asked_for(tmp_path: Path) -> None:
    size = 8 * BLOCK_SIZE
    disk_image(tmp_path / "disk.raw", size)
    seen: list[int] = []
    hashes = ReplicaReader(str(tmp_path / "disk.raw"), size).hashes([(1, 2), (6, 1)], seen.append)
    assert sorted(hashes) == [1, 2, 6]
    assert sum(seen) == 3 * BLOCK_SIZE


def test_a_device_shorter_than_the_disk_reads_as_zeros(tmp_path: Path) -> None:
    (tmp_path / "short.raw").write_bytes(b"x" * 1000)
    hashes = ReplicaReader(str(tmp_path / "short.raw"), BLOCK_SIZE).hashes([(0, 1)])
    assert hashes[0] == hashlib.sha256(b"x" * 1000 + bytes(BLOCK_SIZE - 1000)).digest()


def test_blocks_of_extents() -> None:
    capacity = 10 * BLOCK_SIZE + 7
    assert blocks_of([], capacity) == []
    assert blocks_of([(0, 1)], capacity) == [(0, 1)]
    # ends exactly at a boundary: the next block is not touched
    assert blocks_of([(BLOCK_SIZE, BLOCK_SIZE)], capacity) == [(1, 1)]
    # one byte across a boundary touches both blocks; neighbours and overlaps merge; unsorted input
    assert blocks_of([(5 * BLOCK_SIZE, 10), (2 * BLOCK_SIZE - 1, 2), (3 * BLOCK_SIZE, 1)], capacity) == [(1, 3), (5, 1)]
    # clipped to the disk: the short last block is block 10; beyond is nothing
    assert blocks_of([(10 * BLOCK_SIZE, 100), (11 * BLOCK_SIZE, 5)], capacity) == [(10, 1)]
    assert describe([(1, 3), (5, 1)]) == "1-3, 5"
    assert describe([(i * 2, 1) for i in range(10)], limit=2) == "0, 2 and 8 more range(s)"


def test_coalesce_covers_and_bounds() -> None:
    extents = [(i * 8192, 100) for i in range(1000)]
    out = coalesce(extents, 10)
    assert len(out) <= 10
    for offset, length in extents:  # every input byte is still covered
        assert any(o <= offset and offset + length <= o + n for o, n in out)
    assert coalesce(extents, 1000) == extents
