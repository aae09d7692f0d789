"""Target-side verification: after a disk's sync the OMA reads the replica back and records its block-hash map.

A sync leaves a pending map (maps.record_sync, in the transaction of the disk's completion); before the job's
replicas leave the OMA VM, `verify_job` reads back exactly the blocks that sync covered — every block after a full
copy, the blocks of the changed extents after an incremental — takes the other blocks' hashes from the disk's
previous verified map, and records the map, its digest and the time. Without a previous map (or without the
extents, from an appliance that does not report them) it reads the whole disk, and says why in the job log. Each
read-back is one `verify` step of the job log (started and finished, so its duration is there too).
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import BlockMap, Disk
from oma_server.integrity import maps
from oma_server.integrity.blocks import HASH_SIZE, all_blocks, block_count, blocks_of, count_of, disk_digest
from oma_server.integrity.reader import ReplicaReader
from oma_server.joblog import JobLogService

MIB = 1024 * 1024


class ReplicaVerifier:
    def __init__(self, db: Database, clock: Clock, joblog: JobLogService, *, workers: int = 0) -> None:
        self.db = db
        self.clock = clock
        self.joblog = joblog
        self.workers = workers

    async def verify_job(self, job_id: str) -> int:
        """Read back every disk the job synced whose map is pending; returns how many were verified. A disk whose
        replica cannot be read is left pending, its job-log step failed with the reason."""
        pending = await self.db.run(maps.pending_of_job, job_id)
        results = await asyncio.gather(
            *(self._verify(job_id, row, path) for row, path in pending), return_exceptions=True
        )
        for (row, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                log = logger.bind(job_id=job_id, disk_id=row.disk_id)
                log.opt(exception=result).warning("replica not verified: {e}", e=result)
        return sum(1 for r in results if r is True)

    async def _verify(self, job_id: str, row: BlockMap, path: str) -> bool:
        log = logger.bind(job_id=job_id, disk_id=row.disk_id)
        disk = await self.db.run(Disk.get_by_id, row.disk_id)
        previous = await self.db.run(maps.previous_verified, row)
        total = block_count(row.capacity_bytes)
        why = ""
        if row.extents is None:
            ranges, why = all_blocks(row.capacity_bytes), "the appliance did not say which extents it copied"
        elif previous is None or previous.hashes is None:
            ranges, why = all_blocks(row.capacity_bytes), "no earlier verified map of this disk"
        else:
            ranges = blocks_of([(o, n) for o, n in row.extents], row.capacity_bytes)
        whole = f" (whole disk: {why})" if why else ""
        what = f"disk {disk.key}: replica at change id {row.change_id}"
        entry = await self.joblog.begin(
            job_id, "verify", f"{what}: reading back {count_of(ranges)} of {total} block(s){whole}"
        )
        try:
            if not path:
                raise FileNotFoundError("the replica is not attached to the OMA VM")
            started = time.monotonic()
            reader = ReplicaReader(path, row.capacity_bytes, workers=self.workers)
            read = await asyncio.to_thread(reader.hashes, ranges)
            seconds = time.monotonic() - started
            kept = previous.hashes if previous is not None and count_of(ranges) < total else None
            hashes = bytearray(kept) if kept is not None else bytearray(total * HASH_SIZE)
            for index, value in read.items():
                hashes[index * HASH_SIZE : (index + 1) * HASH_SIZE] = value
            digest = disk_digest(bytes(hashes))
            await self.db.tx(maps.save_verified, row.id, bytes(hashes), digest, len(read), self.clock.now())
        except BaseException as exc:
            await self.joblog.end(entry, "failed", f"{what}: not verified ({exc}); verify it again")
            raise
        nbytes = sum(min(n * row.block_size, row.capacity_bytes - f * row.block_size) for f, n in ranges)
        rate = nbytes / MIB / seconds if seconds > 0 else 0.0
        message = (
            f"{what} verified: digest {row.algorithm}:{digest}; read back {len(read)} of {total} block(s) of "
            f"{row.block_size // MIB} MiB{whole}, {nbytes / MIB:.1f} MiB in {seconds:.2f} s ({rate:.0f} MiB/s)"
        )
        log.info(message)
        await self.joblog.end(entry, "completed", message)
        return True
