"""The agent's source block hashes (vma_client_stubs/agent/source_hashes.py) against the OMA's construction computed
independently over the same bytes: pieces that do not align with blocks, added from several threads in any order,
holes, a short last block, partly covered blocks of an incremental left out, a resumed copy's prefix read again, and
the runs as they go on the wire. And through the real copier into a real NBD export: the hashes it sends are the
source's, block for block."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from oma_server.integrity.blocks import BLOCK_SIZE as OMA_BLOCK_SIZE
from oma_server.integrity.blocks import ZERO_BLOCK_HASH as OMA_ZERO
from tests.agent.nbd import NbdServer
from vma_client_stubs.agent.copier import DiskCopier, Plan, ResumePoint
from vma_client_stubs.agent.extents import allocated_extents
from vma_client_stubs.agent.source_hashes import (
    BLOCK_SIZE,
    MAX_BLOCKS_PER_EVENT,
    ZERO_BLOCK_HASH,
    SourceHasher,
)

MIB = 1 << 20
CAPACITY = 9 * BLOCK_SIZE + 123_456  # a short last block


def expected(data: bytes) -> dict[int, bytes]:
    return {i // BLOCK_SIZE: hashlib.sha256(data[i : i + BLOCK_SIZE]).digest() for i in range(0, len(data), BLOCK_SIZE)}


def image(seed: int) -> tuple[bytes, list[tuple[int, int]]]:
    """A disk's bytes and its data extents: unaligned data, holes, allocated zeros, a short last block."""
    rng = random.Random(seed)
    data = bytearray(CAPACITY)
    extents = [(4096, BLOCK_SIZE + 8192), (3 * BLOCK_SIZE - 65536, 3 * 65536), (6 * BLOCK_SIZE, BLOCK_SIZE)]
    extents.append((9 * BLOCK_SIZE + 4096, CAPACITY - 9 * BLOCK_SIZE - 4096))
    for offset, length in extents[:2] + extents[3:]:
        data[offset : offset + length] = rng.randbytes(length)
    return bytes(data), extents  # block 6 is allocated and all zeros


def feed(hasher: SourceHasher, plan: Plan, data: bytes, piece: int, *, order_seed: int, threads: int) -> None:
    """Add the plan's data in `piece`-byte pieces, shuffled, from several threads at once."""
    pieces = []
    for seg in plan.segments:
        for pos in range(0, seg.length, piece):
            n = min(piece, seg.length - pos)
            pieces.append((seg.offset + pos, n, seg.kind))
    random.Random(order_seed).shuffle(pieces)

    def work(mine: list[tuple[int, int, str]]) -> None:
        for offset, n, kind in mine:
            if kind == "data":
                chunk = bytearray(data[offset : offset + n])
                hasher.add(offset, memoryview(chunk), zero=not any(chunk))

    workers = [threading.Thread(target=work, args=(pieces[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_the_construction_is_the_omas() -> None:
    assert BLOCK_SIZE == OMA_BLOCK_SIZE and ZERO_BLOCK_HASH == OMA_ZERO


@pytest.mark.parametrize(("piece", "seed"), [(BLOCK_SIZE, 1), (MIB + 4096, 2), (65536, 3), (3 * BLOCK_SIZE, 4)])
def test_a_full_copy_hashes_every_block_as_the_oma_would(piece: int, seed: int) -> None:
    data, extents = image(seed)
    for fresh in (True, False):  # holes left out, or zeroed: the hashes are the same
        plan = Plan.full(extents, CAPACITY, fresh_target=fresh)
        hasher = SourceHasher(plan, CAPACITY, whole_disk=True)
        feed(hasher, plan, data, piece, order_seed=seed, threads=4)
        assert hasher.unfinished == 0
        assert hasher.hashes == expected(data)


def test_an_incremental_hashes_whole_blocks_and_the_pieces_of_blocks_it_holds_in_part() -> None:
    data, _ = image(5)
    changed = [
        (BLOCK_SIZE - 4096, BLOCK_SIZE + 8192),  # the end of block 0, block 1 whole, the start of block 2
        (5 * BLOCK_SIZE, 100),
        (5 * BLOCK_SIZE + 4096, 4096),  # a second piece of block 5
        (5 * BLOCK_SIZE + 8192, 4096),  # contiguous with it: the same piece
        (9 * BLOCK_SIZE, CAPACITY),
    ]
    plan = Plan.incremental([(o, min(n, CAPACITY - o)) for o, n in changed])
    hasher = SourceHasher(plan, CAPACITY, whole_disk=False)
    feed(hasher, plan, data, 3000, order_seed=5, threads=3)  # pieces that straddle the extents' own boundaries
    assert hasher.unfinished == 0
    want = expected(data)
    assert hasher.hashes == {1: want[1], 9: want[9]}  # the blocks held whole, the short last one too
    pieces = [(BLOCK_SIZE - 4096, 4096), (2 * BLOCK_SIZE, 4096), (5 * BLOCK_SIZE, 100), (5 * BLOCK_SIZE + 4096, 8192)]
    assert hasher.pieces() == [(o, n, hashlib.sha256(data[o : o + n]).digest()) for o, n in pieces]


def test_runs_are_consecutive_split_for_the_wire_and_empty_for_zeros() -> None:
    size = (MAX_BLOCKS_PER_EVENT + 10) * BLOCK_SIZE
    hasher = SourceHasher(Plan.full([(0, BLOCK_SIZE)], size, fresh_target=True), size, whole_disk=True)
    block = bytearray(os.urandom(BLOCK_SIZE))
    hasher.add(0, memoryview(block))
    runs = hasher.runs()
    assert [(f, n) for f, n, _ in runs] == [(0, MAX_BLOCKS_PER_EVENT), (MAX_BLOCKS_PER_EVENT, 10)]
    assert runs[0][2][:32] == hashlib.sha256(block).digest() and len(runs[0][2]) == MAX_BLOCKS_PER_EVENT * 32
    assert runs[1][2] == b""  # all zeros: no bytes on the wire


def test_a_resumed_copy_reads_its_prefix_again_for_the_hashes(tmp_path: Path) -> None:
    data, extents = image(6)
    source = tmp_path / "disk.raw"
    source.write_bytes(data)
    plan = Plan.full(extents, CAPACITY, fresh_target=True)
    hasher = SourceHasher(plan, CAPACITY, whole_disk=True)
    done = plan.segments[0].length + 65536  # the first segment and a third of the second were copied before a restart
    resume = ResumePoint(plan.plan_id, 1, 65536, done)
    resume.check(plan)
    fd = os.open(source, os.O_RDONLY)
    try:
        assert hasher.prehash(fd, plan, resume, BLOCK_SIZE) == done
    finally:
        os.close(fd)
    assert hasher.unfinished > 0
    for index, seg in enumerate(plan.segments[1:], start=1):  # what the resumed run then reads: the rest
        start = seg.offset + (resume.offset if index == resume.index else 0)
        end = seg.offset + seg.length
        hasher.add(start, memoryview(bytearray(data[start:end])), zero=not any(data[start:end]))
    assert hasher.unfinished == 0 and hasher.hashes == expected(data)


@pytest.mark.nbd
def test_the_copier_hashes_what_it_reads_into_a_real_export(tmp_path: Path, nbd_server: NbdServer) -> None:
    data, _ = image(7)
    source = tmp_path / "disk.raw"
    with open(source, "wb") as f:  # sparse where the image has holes: the plan reads only the data
        f.truncate(CAPACITY)
        for offset in range(0, CAPACITY, 65536):
            piece = data[offset : offset + 65536]
            if any(piece):
                f.seek(offset)
                f.write(piece)
    plan = Plan.full(allocated_extents(source), CAPACITY, fresh_target=True)
    nbd_server.add("hashed", CAPACITY)
    nbd_server.start()
    hasher = SourceHasher(plan, CAPACITY, whole_disk=True)
    DiskCopier(source, nbd_server.uri("hashed"), plan, fresh_target=True, hasher=hasher, connections=2).run()
    assert hasher.hashes == expected(data)
    assert nbd_server.exports["hashed"].read_bytes()[:CAPACITY] == data
