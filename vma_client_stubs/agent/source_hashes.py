"""The source's block hashes, taken from the buffers the copy already holds (issue #15): what the OMA compares its
read-back of the replica with.

The OMA's construction (ovirt-imageio's blkhash, `oma_server/integrity/blocks.py`): SHA-256 of each 2 MiB block of
the disk, the last block as long as it is. Which blocks get a hash:
- a **full copy** knows the whole disk — the plan's data segments as read, everything else (holes) zeros — so every
  block is hashed; a block with no data at all is the all-zero constant, never hashed;
- an **incremental** knows only its changed (and repair) extents: a block they cover whole is hashed; of a block
  they cover in part, each *piece* they cover (an extent's part inside the block) is hashed on its own, since the
  rest of the block was not read (reading it only to hash it would be the second read this avoids). The OMA hashes
  the same pieces of the block it reads back and compares them, so every byte a sync copied is proven.

Pieces arrive from the copier's worker threads in any order and need not align with blocks (a plan's segments start
where the source's extents do): a piece covering a block whole is hashed in place; others are copied into that
block's buffer (holes stay zeros) and the block is hashed when its last data byte arrived. A copy that resumes after
an agent restart re-reads the part of the plan before its resume point (`prehash`: reads only, the source
snapshot is the same) — the hashes of an interrupted run are not kept.

Hand-written: no library assembles block hashes from out-of-order pieces of a copy; hashlib does the hashing (and
releases the GIL, so the workers hash on every core).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

from vma_client_stubs.agent.copy_plan import Plan, ResumePoint

ALGORITHM = "sha256"
BLOCK_SIZE = 2 * 1024 * 1024
HASH_SIZE = 32
#: the most blocks one BlockHashes event carries (32 B each: 1 MiB of hashes, well within a gRPC message)
MAX_BLOCKS_PER_EVENT = 32_768
ZERO_BLOCK_HASH = hashlib.sha256(bytes(BLOCK_SIZE)).digest()

#: (first block, count, hashes): count x 32 bytes, or b"" for a run of all-zero blocks
HashRun = tuple[int, int, bytes]
#: (offset, length, hash) of a piece of a block an incremental copied in part
PieceHash = tuple[int, int, bytes]


class SourceHasher:
    """Block hashes of one disk of `capacity` bytes from the data its copy reads (thread-safe `add`)."""

    def __init__(self, plan: Plan, capacity: int, *, whole_disk: bool) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        data: dict[int, int] = {}  # block → bytes of plan data in it
        covered: dict[int, int] = {}  # block → bytes of plan segments (data or zero) in it
        for seg in plan.segments:
            for block, start, end in self._pieces(seg.offset, seg.length):
                covered[block] = covered.get(block, 0) + end - start
                if seg.kind == "data":
                    data[block] = data.get(block, 0) + end - start
        if whole_disk:
            hashable = range(-(-capacity // BLOCK_SIZE))
        else:
            hashable = [b for b, n in covered.items() if n == self._length(b)]  # type: ignore[assignment]
        self._waiting = {b: data[b] for b in hashable if data.get(b)}
        self._parts: dict[int, bytearray] = {}
        self.hashes: dict[int, bytes] = {b: self._zero(b) for b in hashable if not data.get(b)}
        # blocks covered in part: the plan's pieces in each, hashed when the block's data is all in
        self._pieces_of: dict[int, list[tuple[int, int]]] = {}
        whole = set(hashable)
        if not whole_disk:
            for seg in plan.segments:
                for block, start, end in self._pieces(seg.offset, seg.length):
                    if block in whole:
                        continue
                    pieces = self._pieces_of.setdefault(block, [])
                    if pieces and pieces[-1][1] == start:
                        pieces[-1] = (pieces[-1][0], end)  # contiguous segments: one piece
                    else:
                        pieces.append((start, end))
            for block in self._pieces_of:
                self._waiting[block] = data[block]
        self.piece_hashes: dict[int, bytes] = {}  # offset of the piece → its hash (its length: `pieces`)

    def _length(self, block: int) -> int:
        return min(BLOCK_SIZE, self.capacity - block * BLOCK_SIZE)

    def _zero(self, block: int) -> bytes:
        length = self._length(block)
        return ZERO_BLOCK_HASH if length == BLOCK_SIZE else hashlib.sha256(bytes(length)).digest()

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(block, start, end) of the bytes [offset, offset + length) within the disk, block by block."""
        pos, end = offset, min(offset + length, self.capacity)
        while pos < end:
            block = pos // BLOCK_SIZE
            stop = min(end, (block + 1) * BLOCK_SIZE)
            yield block, pos, stop
            pos = stop

    def add(self, offset: int, data: memoryview, *, zero: bool = False) -> None:
        """The copy read `data` at `offset` (`zero`: it is all zeros, so nothing needs copying or hashing)."""
        for block, start, end in self._pieces(offset, len(data)):
            if block not in self._waiting:
                continue
            piece = data[start - offset : end - offset]
            if end - start == self._length(block) and block not in self._pieces_of:  # hash the whole block in place
                value = self._zero(block) if zero else hashlib.sha256(piece).digest()
                with self._lock:
                    self._waiting.pop(block, None)
                    self.hashes[block] = value
                continue
            with self._lock:
                buf = self._parts.setdefault(block, bytearray(self._length(block)))
            if not zero:  # pieces of one block never overlap: no lock needed to copy
                base = block * BLOCK_SIZE
                buf[start - base : end - base] = piece
            with self._lock:
                self._waiting[block] -= end - start
                last = self._waiting[block] == 0
                if last:
                    del self._waiting[block]
                    del self._parts[block]
            if last:  # every data byte of the block is in: the last piece's thread hashes it
                self._hash_block(block, buf)

    def _hash_block(self, block: int, buf: bytearray) -> None:
        pieces = self._pieces_of.get(block)
        if pieces is None:
            value = hashlib.sha256(buf).digest()
            with self._lock:
                self.hashes[block] = value
            return
        base = block * BLOCK_SIZE
        view = memoryview(buf)
        found = {start: hashlib.sha256(view[start - base : end - base]).digest() for start, end in pieces}
        with self._lock:
            self.piece_hashes.update(found)

    def prehash(self, fd: int, plan: Plan, resume: ResumePoint, chunk_size: int) -> int:
        """Read and add the plan's data before `resume` (a resumed copy does not read it again); bytes read."""
        read = 0
        before = resume.done
        buf = bytearray(chunk_size)
        for seg in plan.segments:
            if before <= 0:
                break
            take = min(seg.length, before)
            before -= take
            if seg.kind != "data":
                continue
            for pos in range(0, take, chunk_size):
                n = min(chunk_size, take - pos)
                view = memoryview(buf)[:n]
                got = os.preadv(fd, [view], seg.offset + pos)
                if got < n:
                    view[got:] = bytes(n - got)
                self.add(seg.offset + pos, view)
                read += n
        return read

    def runs(self) -> list[HashRun]:
        """The hashes as runs of consecutive blocks, each at most MAX_BLOCKS_PER_EVENT long; all-zero runs empty."""
        out: list[HashRun] = []
        run: list[int] = []

        def flush() -> None:
            if not run:
                return
            values = [self.hashes[b] for b in run]
            zero = all(v == self._zero(b) for b, v in zip(run, values, strict=True))
            out.append((run[0], len(run), b"" if zero else b"".join(values)))
            run.clear()

        for block in sorted(self.hashes):
            if run and (block != run[-1] + 1 or len(run) == MAX_BLOCKS_PER_EVENT):
                flush()
            run.append(block)
        flush()
        return out

    def pieces(self) -> list[PieceHash]:
        """The hashes of the pieces of partly copied blocks, in disk order."""
        out = []
        for block in sorted(self._pieces_of):
            for start, end in self._pieces_of[block]:
                if start in self.piece_hashes:
                    out.append((start, end - start, self.piece_hashes[start]))
        return out

    @property
    def unfinished(self) -> int:
        """Blocks still waiting for data (none once the copy is done)."""
        return len(self._waiting)
