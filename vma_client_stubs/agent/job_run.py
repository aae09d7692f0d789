"""Running one replication job on the appliance: snapshot, plan each disk, copy the disks in parallel, tell the OMA.

The job's disks copy at most `CopyOptions.disks_per_job` at once, and all jobs' disks at most
`CopyOptions.copies_per_appliance`; each disk reports its own bytes and throughput. A run ends completed, cancelled,
failed with a classified error (JobFailed names the disk), abandoned (the OMA does not know the job) or paused for
shutdown (it resumes from its acknowledged point at the next start). The snapshot is removed when the job ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from loguru import logger

from oma.common.v1 import jobs_pb2
from vma.v1 import stream_pb2
from vma_client_stubs.agent.copier import (
    CONNECT_DEADLINE_S,
    CopyCancelled,
    CopyError,
    CopyResult,
    DiskCopier,
    Plan,
    ResumePoint,
    TargetConnectionLost,
    TargetTooSmall,
    TargetUnreachable,
    TlsSettings,
)
from vma_client_stubs.agent.disk_plan import plan_disk
from vma_client_stubs.agent.extents import coalesce
from vma_client_stubs.agent.messages import JobMessages
from vma_client_stubs.agent.rate_limit import BandwidthLimits
from vma_client_stubs.agent.runs import CopyOptions, DiskRun, JobFailure, JobRunner, Stopped, TargetGone
from vma_client_stubs.agent.source_commands import SNAPSHOT_DESCRIPTION_PREFIX
from vma_client_stubs.agent.source_hashes import ALGORITHM, BLOCK_SIZE, MAX_BLOCKS_PER_EVENT, SourceHasher
from vma_client_stubs.agent.vcenter import FakeVCenter, Snapshot, SnapshotNotFound, VCenterError, VmNotFound

#: the most byte ranges a DiskCompleted may name (vma.v1.CopiedExtents)
MAX_COPIED_EXTENTS = 65_536
#: a reconnecting copy's connection attempts (short: a new target from the OMA is taken at the next one)
RECONNECT_ATTEMPT_S = 2.0
RECONNECT_PAUSE_S = (0.2, 2.0)  # first pause between attempts, doubling up to the second


class JobExecutor:
    """Runs jobs (one `run()` per job task) within the appliance's bound on parallel disk copies."""

    def __init__(
        self,
        vcenter: FakeVCenter,
        messages: JobMessages,
        options: CopyOptions,
        *,
        report_interval_s: float,
        limits: BandwidthLimits | None = None,
        log: Any = logger,
    ) -> None:
        self.vcenter = vcenter
        self.limits = limits or BandwidthLimits(options.max_bytes_per_second or 0.0)
        self.messages = messages
        self.options = options
        self.report_interval_s = report_interval_s
        self.log = log
        self._copy_slots = asyncio.Semaphore(options.copies_per_appliance)
        self.copies_running = 0
        self.peak_copies = 0  # most disk copies of all jobs at once since start

    async def run(self, runner: JobRunner) -> None:
        """One run of the job, to whichever end; the record is saved whatever happens."""
        record = runner.record
        log = self.log.bind(job_id=record.job_id)
        record.runs += 1
        # The OMA durably applied everything up to this sequence when it sent the command.
        record.acked(record.command.last_applied_sequence)
        reporter: list[asyncio.Task[None]] = []
        try:
            await self._run(runner, reporter, log)
        except Stopped:
            await self._stopped(runner, log)
        except JobFailure as failure:
            await self._failed(runner, failure, log)
        except Exception as exc:
            record.status = "failed"
            record.detail = f"{type(exc).__name__}: {exc}"
            log.exception("job failed unexpectedly")
            error = stream_pb2.JobFailed(
                error_class=jobs_pb2.ERROR_CLASS_INTERNAL, detail=f"appliance error: {record.detail}"
            )
            await self.messages.emit(record.job_id, stream_pb2.JobEvent(failed=error))
        finally:
            self.limits.forget(record.job_id)
            for task in reporter:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if record.status != "running" and record.snapshot_id:
                with contextlib.suppress(VCenterError):
                    await asyncio.to_thread(self.vcenter.remove_snapshot, record.vm_uuid, record.snapshot_id)
                    log.info("snapshot {snap} removed", snap=record.snapshot_id)
            await self.messages.save(record)

    async def _run(self, runner: JobRunner, reporter: list[asyncio.Task[None]], log: Any) -> None:
        record = runner.record
        runner.disks = [DiskRun(target=t, record=record.disks[t.disk_id]) for t in record.command.disks]
        runner.phase, runner.operation = jobs_pb2.COPY_PHASE_SNAPSHOTTING, "Taking the VM snapshot"
        for disk in runner.disks:
            disk.phase = jobs_pb2.COPY_PHASE_SNAPSHOTTING if not disk.record.completed else disk.phase
        snapshot = await self._snapshot(runner, log)
        if not record.started_event:
            started = stream_pb2.JobStarted(source_snapshot=snapshot.id)
            await self.messages.emit(record.job_id, stream_pb2.JobEvent(started=started))
            record.started_event = True
            await self.messages.save(record)
        runner.phase, runner.operation = jobs_pb2.COPY_PHASE_QUERYING_CHANGES, "Querying changed areas"
        for disk in runner.disks:
            await plan_disk(self.vcenter, disk, snapshot, log)
        reporter.append(asyncio.create_task(self._report_loop(runner)))
        await self._copy_disks(runner, snapshot, log)
        runner.phase, runner.operation = jobs_pb2.COPY_PHASE_DONE, "Completed"
        reporter[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter[0]
        await self.messages.report(runner)
        completed = stream_pb2.JobCompleted(bytes_copied=record.bytes_written)
        await self.messages.emit(record.job_id, stream_pb2.JobEvent(completed=completed))
        record.status = "completed"
        log.info(
            "job completed: {n} disk(s), {mib:.1f} MiB written", n=len(runner.disks), mib=record.bytes_written / 2**20
        )

    async def _stopped(self, runner: JobRunner, log: Any) -> None:
        record = runner.record
        if runner.stop_reason == "cancel":
            record.status = "cancelled"
            cancelled = stream_pb2.JobCancelled(detail="cancelled by the OMA during the copy")
            await self.messages.emit(record.job_id, stream_pb2.JobEvent(cancelled=cancelled))
            log.info("job cancelled")
        elif runner.stop_reason == "abandon":
            record.status = "abandoned"
        else:
            log.info("job paused for shutdown; it resumes from its acknowledged point at the next start")

    async def _failed(self, runner: JobRunner, failure: JobFailure, log: Any) -> None:
        record = runner.record
        record.status = "failed"
        record.detail = failure.detail
        log.bind(disk_id=failure.disk_id or None).error(
            "job failed ({cls}): {detail}", cls=failure.error_class, detail=failure.detail
        )
        error = stream_pb2.JobFailed(
            error_class=jobs_pb2.ErrorClass.Value(f"ERROR_CLASS_{failure.error_class}"),  # type: ignore[arg-type]
            detail=failure.detail,
            disk_id=failure.disk_id,
        )
        await self.messages.emit(record.job_id, stream_pb2.JobEvent(failed=error))

    async def _snapshot(self, runner: JobRunner, log: Any) -> Snapshot:
        record = runner.record
        if record.snapshot_id:
            try:
                snapshot = await asyncio.to_thread(self.vcenter.get_snapshot, record.vm_uuid, record.snapshot_id)
                log.info("reusing snapshot {snap}", snap=snapshot.id)
                return snapshot
            except SnapshotNotFound:
                log.warning("snapshot {snap} is gone; taking a new one (disks start over)", snap=record.snapshot_id)
                for disk in record.disks.values():
                    if not disk.completed:
                        disk.acked_token = ""
        runner.check_stop()
        await self.messages.report(runner)
        description = snapshot_description(record.job_id)
        # A snapshot this job took just before the agent died, unrecorded: nothing was copied from it (copies start
        # after the record names their snapshot), so remove it rather than leave it to grow on the source VM.
        with contextlib.suppress(VCenterError):
            for stale in await asyncio.to_thread(self.vcenter.find_snapshots, record.vm_uuid, description):
                await asyncio.to_thread(self.vcenter.remove_snapshot, record.vm_uuid, stale.id)
                log.info("removed snapshot {snap}, taken by an earlier run that did not record it", snap=stale.id)
        try:
            snapshot = await asyncio.to_thread(self.vcenter.create_snapshot, record.vm_uuid, description)
        except VmNotFound as exc:
            raise JobFailure("INVALID_COMMAND", str(exc)) from exc
        except (OSError, VCenterError) as exc:
            raise JobFailure("SNAPSHOT_FAILED", f"snapshot of VM {record.vm_uuid} failed: {exc}") from exc
        record.snapshot_id = snapshot.id
        await self.messages.save(record)
        log.info("snapshot {snap} taken", snap=snapshot.id)
        return snapshot

    async def _report_loop(self, runner: JobRunner) -> None:
        while True:
            try:
                await self.messages.report(runner)
            except Exception:
                self.log.bind(job_id=runner.record.job_id).exception("progress report failed")
            await asyncio.sleep(self.report_interval_s)

    async def _copy_disks(self, runner: JobRunner, snapshot: Snapshot, log: Any) -> None:
        """Copy the job's unfinished disks in parallel within the job's and the appliance's bounds.

        The first failure stops the other disks (their in-flight writes drain, their resume points stay exact) and
        is raised; a job failure wins over the stop it causes in its siblings.
        """
        pending = [d for d in runner.disks if not d.record.completed]
        tasks = [asyncio.create_task(self._copy_disk_bounded(runner, d, snapshot, log)) for d in pending]
        if not tasks:
            return
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if not t.cancelled() and t.exception() is not None]
            if failed:
                runner.cancel.set()  # siblings stop at their next chunk and drain
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
        first = next((e for e in errors if isinstance(e, JobFailure)), errors[0] if errors else None)
        if first is not None:
            raise first

    async def _copy_disk_bounded(self, runner: JobRunner, disk: DiskRun, snapshot: Snapshot, log: Any) -> None:
        async with runner.disk_slots, self._copy_slots:
            self.copies_running += 1
            self.peak_copies = max(self.peak_copies, self.copies_running)
            try:
                await self._copy_disk(runner, disk, snapshot, log)
            finally:
                self.copies_running -= 1

    async def _copy_disk(self, runner: JobRunner, disk: DiskRun, snapshot: Snapshot, log: Any) -> None:
        target = disk.target
        log = log.bind(disk_id=target.disk_id)
        runner.check_stop()
        disk.phase = runner.phase = jobs_pb2.COPY_PHASE_COPYING
        mode = "incremental" if disk.mode == jobs_pb2.COPY_MODE_INCREMENTAL else "full"
        try:
            copier, result = await self._copy_reconnecting(runner, disk, f"{target.disk_key} ({mode})", log)
        finally:
            runner.disk_copied(target.disk_id)
        if copier.prehashed_bytes:
            log.info(
                "disk {disk}: read {mib:.1f} MiB copied before the restart again to hash it",
                disk=target.disk_id,
                mib=copier.prehashed_bytes / 2**20,
            )
        disk.phase = jobs_pb2.COPY_PHASE_FINALIZING
        log.info(
            "disk {disk} copied ({mode}): {done} bytes in {s:.2f} s ({mibs:.0f} MiB/s), {w} written, {z} zeroed, "
            "{sk} zero bytes skipped, resumed at {r}",
            disk=target.disk_id,
            mode=mode,
            done=result.bytes_done,
            s=result.elapsed_s,
            mibs=result.throughput / 2**20,
            w=result.bytes_written,
            z=result.bytes_zeroed,
            sk=result.bytes_skipped,
            r=result.resume_from,
        )
        assert copier.hasher is not None
        await self._send_hashes(runner, disk, copier.hasher)
        await self._disk_completed(runner, disk, snapshot.disk(target.disk_key).change_id)

    async def _copy_reconnecting(
        self, runner: JobRunner, disk: DiskRun, label: str, log: Any
    ) -> tuple[DiskCopier, CopyResult]:
        """The disk's copy; when its export cannot be reached or its connection is lost (the OMA's NBD server
        restarted, or another OMA process took the job's replicas over and names their new address: `retarget`),
        it connects again — to the target as it is now — and resumes from its acknowledged point, for up to
        `target_wait_s` without a byte written; then the job fails with the last error."""
        pause, attempt_s = RECONNECT_PAUSE_S[0], None
        gave_up_at: float | None = None
        while True:
            runner.disk_copying(disk.target.disk_id, label)
            runner.retargeted.clear()  # a new target from here on wakes the pause below
            copier = self._copier(runner, disk, attempt_s)
            try:
                return copier, await self._watch(runner, disk, copier)
            except TargetGone as gone:
                now = time.monotonic()
                if gave_up_at is None or copier.progress().bytes_written > 0:
                    gave_up_at, pause = now + self.options.target_wait_s, RECONNECT_PAUSE_S[0]
                if now >= gave_up_at:
                    raise
                log.warning("disk {d}: {e}; reconnecting to its export", d=disk.target.disk_id, e=gone.detail)
                runner.disk_copying(disk.target.disk_id, f"{disk.target.disk_key} (reconnecting to its NBD export)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner.retargeted.wait(), pause)
            runner.check_stop()
            pause, attempt_s = min(pause * 2, RECONNECT_PAUSE_S[1]), RECONNECT_ATTEMPT_S

    async def _send_hashes(self, runner: JobRunner, disk: DiskRun, hasher: SourceHasher) -> None:
        """The source's hashes of the disk — whole blocks, then pieces of blocks copied in part — in events of at
        most MAX_BLOCKS_PER_EVENT blocks or pieces."""

        async def send(**fields: Any) -> None:
            hashes = stream_pb2.BlockHashes(
                disk_id=disk.target.disk_id, algorithm=ALGORITHM, block_size=BLOCK_SIZE, **fields
            )
            await self.messages.emit(runner.record.job_id, stream_pb2.JobEvent(block_hashes=hashes))

        batch: list[stream_pb2.BlockHashRun] = []
        blocks = 0
        for first, count, values in hasher.runs():
            if batch and blocks + count > MAX_BLOCKS_PER_EVENT:
                await send(runs=batch)
                batch, blocks = [], 0
            batch.append(stream_pb2.BlockHashRun(first_block=first, count=count, hashes=values))
            blocks += count
        if batch:
            await send(runs=batch)
        pieces = [stream_pb2.PieceHash(offset=o, length=n, hash=h) for o, n, h in hasher.pieces()]
        for start in range(0, len(pieces), MAX_BLOCKS_PER_EVENT):
            await send(pieces=pieces[start : start + MAX_BLOCKS_PER_EVENT])

    def _copier(self, runner: JobRunner, disk: DiskRun, connect_deadline_s: float | None = None) -> DiskCopier:
        assert disk.plan is not None and disk.snapshot_path is not None
        resume = ResumePoint.decode(disk.record.acked_token) if disk.record.acked_token else None
        opts = self.options
        uri, tls = disk.target.nbd_uri, None
        if opts.nbd_certificates is not None:
            tls = TlsSettings(certificates_dir=opts.nbd_certificates)
            if uri.startswith("nbd://"):  # an OMA that also serves plaintext (credential-hello appliances)
                uri = "nbds://" + uri.removeprefix("nbd://")
        return DiskCopier(
            disk.snapshot_path,
            uri,
            disk.plan,
            tls=tls,
            fresh_target=disk.fresh_target,
            resume=resume,
            chunk_size=opts.chunk_size,
            window=opts.window,
            connections=opts.connections,
            cancel=runner.cancel,
            checkpoint_interval_s=opts.checkpoint_interval_s,
            limits=self.limits.buckets_for(runner.record.job_id),
            hasher=SourceHasher(
                disk.plan, disk.capacity or disk.plan.end, whole_disk=disk.mode == jobs_pb2.COPY_MODE_FULL
            ),
            connect_deadline_s=CONNECT_DEADLINE_S if connect_deadline_s is None else connect_deadline_s,
        )

    async def _watch(self, runner: JobRunner, disk: DiskRun, copier: DiskCopier) -> CopyResult:
        """Run the copier in a thread, following its progress; a copy error becomes the job's classified failure."""
        assert disk.plan is not None
        target = disk.target
        disk.progress = copier.progress()
        written_before = disk.record.bytes_written
        zeroed_before = disk.record.bytes_zeroed
        task = asyncio.create_task(asyncio.to_thread(copier.run))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.1)
                disk.progress = copier.progress()
                disk.bytes_written_run = disk.progress.bytes_written
                disk.record.bytes_written = written_before + disk.progress.bytes_written
                disk.record.bytes_zeroed = zeroed_before + disk.progress.bytes_zeroed
            result = task.result()
        except CopyCancelled as exc:
            disk.progress = exc.result
            disk.record.bytes_written = written_before + exc.result.bytes_written
            raise Stopped() from exc
        except TargetTooSmall as exc:
            cls = "DISK_RESIZED" if target.capacity_bytes != disk.plan.end else exc.error_class
            raise JobFailure(cls, f"disk {target.disk_id} (key {target.disk_key}): {exc}", target.disk_id) from exc
        except (TargetUnreachable, TargetConnectionLost) as exc:
            raise TargetGone(
                exc.error_class, f"disk {target.disk_id} (key {target.disk_key}): {exc}", target.disk_id
            ) from exc
        except CopyError as exc:
            raise JobFailure(
                exc.error_class, f"disk {target.disk_id} (key {target.disk_key}): {exc}", target.disk_id
            ) from exc
        finally:
            if not task.done():  # we were cancelled ourselves: stop the thread and let it drain
                runner.cancel.set()
                with contextlib.suppress(BaseException):
                    await task
        disk.progress = result
        disk.bytes_written_run = result.bytes_written
        disk.record.bytes_written = written_before + result.bytes_written
        disk.record.bytes_zeroed = zeroed_before + result.bytes_zeroed
        return result

    async def _disk_completed(self, runner: JobRunner, disk: DiskRun, change_id: str) -> None:
        assert disk.plan is not None
        disk.phase = jobs_pb2.COPY_PHASE_DONE
        await self.messages.report(runner)
        completed = stream_pb2.DiskCompleted(
            disk_id=disk.target.disk_id,
            change_id=change_id,
            bytes_copied=disk.record.bytes_written,
            mode=disk.mode,  # type: ignore[arg-type]
            copied=copied_extents(disk.plan),
        )
        await self.messages.emit(runner.record.job_id, stream_pb2.JobEvent(disk_completed=completed))
        disk.record.completed = True
        disk.record.change_id = change_id
        await self.messages.save(runner.record)


def copied_extents(plan: Plan) -> stream_pb2.CopiedExtents:
    """What the plan wrote (data and zeroed segments), merged to at most what the OMA accepts."""
    covered = coalesce(((s.offset, s.length) for s in plan.segments), MAX_COPIED_EXTENTS)
    return stream_pb2.CopiedExtents(extents=[stream_pb2.ByteExtent(offset=o, length=n) for o, n in covered])


def snapshot_description(job_id: str) -> str:
    """What the agent names the VMware snapshot of a job: how a snapshot it did not get to record is found again."""
    return f"{SNAPSHOT_DESCRIPTION_PREFIX}{job_id}"
