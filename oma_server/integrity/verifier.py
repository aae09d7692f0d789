"""Target-side verification: after a disk's sync the OMA reads the replica back and records its block-hash map.

A sync leaves a pending map (maps.record_sync, in the transaction of the disk's completion); before the job's
replicas leave the OMA VM, `verify_job` reads back exactly the blocks that sync covered — every block after a full
copy, the blocks of the changed extents after an incremental — takes the other blocks' hashes from the disk's
previous verified map, and records the map, its digest and the time. Without a previous map (or without the
extents, from an appliance that does not report them) it reads the whole disk, and says why in the job log. Each
read-back is one `verify` step of the job log (started and finished, so its duration is there too).

Each disk is read back as soon as its sync completed (`verify_disk_soon`, started by the replication workflow at
the disk's DiskCompleted), so the read-back of one disk overlaps the copy of the job's others; `verify_job`, at the
job's end, collects those and reads back whatever is still pending.

Every block read is compared with the source's hash the appliance sent for it in this job (vma.v1.BlockHashes,
stored by maps.record_source_hashes). The map records the source's hash where there is one (the replica's own
elsewhere), so a replica that differs never gets a map that agrees with it. A difference is kept on the map like a
mismatch found at rest (`check_*`, the sync's own job as the checking job): the gate refuses failover naming the
disk and its blocks, and the disk's next sync recopies exactly those blocks (replication/workflow.py). An appliance
that sends no hashes gets verification by the read-back alone, and the job log says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass, field

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import Disk
from oma_server.integrity import at_rest, maps
from oma_server.integrity.blocks import (
    HASH_SIZE,
    BlockRange,
    all_blocks,
    block_count,
    blocks_of,
    count_of,
    describe,
    disk_digest,
    index_ranges,
)
from oma_server.integrity.reader import ReplicaReader
from oma_server.joblog import JobLogService

MIB = 1024 * 1024


@dataclass
class JobVerification:
    """What the read-back of a job's sync found: disks verified, and those whose replica differs from the source's
    hashes (disk id → (disk key, block ranges))."""

    verified: int = 0
    mismatched: dict[str, tuple[int, list[BlockRange]]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Source:
    """What the appliance hashed of the source in this job: whole blocks, and pieces of blocks copied in part."""

    blocks: dict[int, bytes]
    pieces: dict[int, list[maps.PieceHash]]

    def compare(self, read: dict[int, bytes], read_pieces: dict[int, bytes]) -> tuple[list[BlockRange], int]:
        """The block ranges that differ from the source, and how many blocks read were compared."""
        differ = {f + i for f, n in at_rest.mismatches(self.blocks, read) for i in range(n)}
        for block, pieces in self.pieces.items():
            if block in read and any(read_pieces.get(offset) != value for offset, _, value in pieces):
                differ.add(block)
        compared = sum(1 for index in read if index in self.blocks or index in self.pieces)
        return index_ranges(differ), compared


@dataclass(frozen=True)
class _Plan:
    ranges: list[BlockRange]
    why: str  # why the whole disk is read ("" when only the synced blocks are)
    kept: bytes | None  # the hashes of the blocks not read, from the disk's previous verified map


#: a disk's read-back: (disk key, the block ranges that differ from the source), None when it had nothing pending
DiskOutcome = tuple[int, list[BlockRange]] | None


class ReplicaVerifier:
    def __init__(self, db: Database, clock: Clock, joblog: JobLogService, *, workers: int = 0) -> None:
        self.db = db
        self.clock = clock
        self.joblog = joblog
        self.workers = workers
        self._early: dict[tuple[str, str], asyncio.Task[DiskOutcome]] = {}  # (job, disk) → its read-back

    def verify_disk_soon(self, job_id: str, disk_id: str) -> None:
        """Start the read-back of one disk as soon as its sync completed, while the job's other disks still copy
        (verify_job collects it at the job's end)."""
        key = (job_id, disk_id)
        if key not in self._early:
            task = asyncio.create_task(self._verify_disk(job_id, disk_id), name=f"verify-{job_id}-{disk_id}")
            self._early[key] = task
            task.add_done_callback(lambda t: self._forget_idle(key, t))

    def _forget_idle(self, key: tuple[str, str], task: asyncio.Task[DiskOutcome]) -> None:
        if task.cancelled() or (task.exception() is None and task.result() is None):
            self._early.pop(key, None)  # nothing was read: nothing for verify_job to collect

    async def _verify_disk(self, job_id: str, disk_id: str) -> DiskOutcome:
        for row, path in await self.db.run(maps.pending_of_job, job_id):
            if row.disk_id == disk_id:
                return await self._verify(job_id, row, path)
        return None

    async def forget(self, job_id: str) -> None:
        """A job that ended other than completed: its early read-backs are let finish and dropped."""
        for key in [k for k in self._early if k[0] == job_id]:
            with contextlib.suppress(Exception):
                await self._early.pop(key)

    async def stop(self) -> None:
        tasks = list(self._early.values())
        self._early.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def verify_job(self, job_id: str) -> JobVerification:
        """Collect the read-backs that started at each disk's completion, then read back every disk of the job whose
        map is still pending. A disk whose replica cannot be read is left pending, its job-log step failed."""
        early = [(key[1], self._early.pop(key)) for key in [k for k in self._early if k[0] == job_id]]
        collected = await asyncio.gather(*(task for _, task in early), return_exceptions=True)
        results: list[tuple[str, DiskOutcome | BaseException]] = [
            (disk_id, result) for (disk_id, _), result in zip(early, collected, strict=True)
        ]
        pending = await self.db.run(maps.pending_of_job, job_id)  # not started early, or failed then: once more
        late = await asyncio.gather(*(self._verify(job_id, row, path) for row, path in pending), return_exceptions=True)
        results += [(row.disk_id, result) for (row, _), result in zip(pending, late, strict=True)]
        outcome = JobVerification()
        for disk_id, result in results:
            if isinstance(result, BaseException):
                log = logger.bind(job_id=job_id, disk_id=disk_id)
                log.opt(exception=result).warning("replica not verified: {e}", e=result)
            elif result is not None and result[1]:
                outcome.mismatched[disk_id] = result
            elif result is not None:
                outcome.verified += 1
        return outcome

    async def _plan(self, row: BlockMap) -> _Plan:
        previous = await self.db.run(maps.previous_verified, row)
        if row.extents is None:
            return _Plan(all_blocks(row.capacity_bytes), "the appliance did not say which extents it copied", None)
        if previous is None or previous.hashes is None:
            return _Plan(all_blocks(row.capacity_bytes), "no earlier verified map of this disk", None)
        ranges = blocks_of([(o, n) for o, n in row.extents], row.capacity_bytes)
        return _Plan(ranges, "", previous.hashes if count_of(ranges) < block_count(row.capacity_bytes) else None)

    async def _verify(self, job_id: str, row: BlockMap, path: str) -> tuple[int, list[BlockRange]]:
        """Read back, compare with the source's hashes, record; (disk key, the block ranges that differ)."""
        disk = await self.db.run(Disk.get_by_id, row.disk_id)
        plan = await self._plan(row)
        source = _Source(
            await self.db.run(maps.source_hashes, job_id, row.disk_id, row.capacity_bytes),
            await self.db.run(maps.source_pieces, job_id, row.disk_id),
        )
        total = block_count(row.capacity_bytes)
        whole = f" (whole disk: {plan.why})" if plan.why else ""
        what = f"disk {disk.key}: replica at change id {row.change_id}"
        entry = await self.joblog.begin(
            job_id, "verify", f"{what}: reading back {count_of(plan.ranges)} of {total} block(s){whole}"
        )
        try:
            if not path:
                raise FileNotFoundError("the replica is not attached to the OMA VM")
            started = time.monotonic()
            reader = ReplicaReader(path, row.capacity_bytes, workers=self.workers)
            pieces = {b: [(o, n) for o, n, _ in ps] for b, ps in source.pieces.items()}
            read = await asyncio.to_thread(functools.partial(reader.hashes, plan.ranges, pieces=pieces))
            seconds = time.monotonic() - started
            hashes = bytearray(plan.kept) if plan.kept is not None else bytearray(total * HASH_SIZE)
            for index, value in read.items():
                hashes[index * HASH_SIZE : (index + 1) * HASH_SIZE] = source.blocks.get(index, value)
            differ, compared = source.compare(read, reader.piece_hashes)
            digest = disk_digest(bytes(hashes))
            await self.db.tx(self._record, row, bytes(hashes), digest, compared, job_id, read, differ)
        except BaseException as exc:
            await self.joblog.end(entry, "failed", f"{what}: not verified ({exc}); verify it again")
            raise
        message = self._message(what, row, plan, digest, read, source, compared, seconds) + whole
        if differ:
            message += f"; DIFFERS from the source in block(s) {describe(differ)}"
        logger.bind(job_id=job_id, disk_id=row.disk_id).log("WARNING" if differ else "INFO", message)
        await self.joblog.end(entry, "failed" if differ else "completed", message)
        return disk.key, differ

    def _record(
        self,
        row: BlockMap,
        hashes: bytes,
        digest: str,
        compared: int,
        job_id: str,
        read: dict[int, bytes],
        differ: list[BlockRange],
    ) -> None:
        at = self.clock.now()
        maps.save_verified(row.id, hashes, digest, len(read), compared, at)
        if differ:  # kept like a difference found at rest: the gate refuses it, the next sync recopies the blocks
            replica = bytearray(hashes)
            for index, value in read.items():
                replica[index * HASH_SIZE : (index + 1) * HASH_SIZE] = value
            at_rest.record_check(row.id, job_id, at, disk_digest(bytes(replica)), differ)

    @staticmethod
    def _message(
        what: str,
        row: BlockMap,
        plan: _Plan,
        digest: str,
        read: dict[int, bytes],
        source: _Source,
        compared: int,
        seconds: float,
    ) -> str:
        nbytes = sum(min(n * row.block_size, row.capacity_bytes - f * row.block_size) for f, n in plan.ranges)
        rate = nbytes / MIB / seconds if seconds > 0 else 0.0
        in_pieces = sum(1 for index in read if index in source.pieces)
        partly = f", {in_pieces} of those copied in part, by their pieces" if in_pieces else ""
        against = (
            f"{compared} of them compared with the appliance's source hashes{partly}"
            if source.blocks or source.pieces
            else "the appliance sent no block hashes: verified by the read-back alone"
        )
        total = block_count(row.capacity_bytes)
        return (
            f"{what} verified: digest {row.algorithm}:{digest}; read back {len(read)} of {total} block(s) of "
            f"{row.block_size // MIB} MiB ({against}), {nbytes / MIB:.1f} MiB in {seconds:.2f} s ({rate:.0f} MiB/s)"
        )
