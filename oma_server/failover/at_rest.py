"""VerifyVmContext: every replica of a VM re-read at rest and compared with its block-hash map, as a job of the
failover engine (kind `verify`), so it is listed, watched, cancelled, logged and resumed after a restart like the
others.

The job claims the VM context (active_job_id; its status stays ready_for_failover), so no sync or failover runs
meanwhile. Steps:
- `attach_replicas` — a data-volume slot per disk (queued behind replication jobs like any job), each replica
  attached to the OMA VM for reading (never exported).
- `read_back` — each replica read whole (`integrity.reader.ReplicaReader`: parallel, sequential runs, no page-cache
  pollution) and every block's hash compared with the disk's verified map at its current change id; the step's
  message (and a job-log entry per disk) shows the blocks read while it runs; each disk's outcome and time are
  recorded on its map (`integrity.at_rest.record_check`). It attaches again what an OMA restart took off, so a
  resumed job reads again and ends as an uninterrupted one would.
- `release_replicas` — the replicas leave the OMA VM, the slots go to the next job.
- `report` — a mismatch fails the job (REPLICA_MISMATCH, each disk with its block ranges) only now, after the
  replicas were released; the gate refuses failover for those disks and their next sync recopies the mismatching
  blocks (replication/disk_plans.py; the whole disk from an appliance without "repair-extents").
A failed or cancelled job releases the replicas it attached (`release_after`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import Disk, VmContext
from oma_server.engine import OUTAGE, Step
from oma_server.errors import FailedPrecondition, job_already_active
from oma_server.failover.state_machine import FailoverJobState, FailoverKind
from oma_server.failover.step_base import StepContext, StepResult
from oma_server.failover.store import FailoverJobStore, open_failover_of
from oma_server.integrity import at_rest
from oma_server.integrity.at_rest import ReplicaMismatch, RestTarget
from oma_server.integrity.blocks import BLOCK_SIZE, BlockRange, all_blocks, disk_digest
from oma_server.integrity.reader import ReplicaReader
from oma_server.joblog import JobLogService, note
from oma_server.storage.attachments import OmaAttachments, QueuePlace
from oma_server.storage.volumes import current_volume
from oma_server.vm_contexts.service import vm_not_found
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm

MIB = 1024 * 1024
VerifyStep = Step[StepContext, StepResult]


def _claim(vm_context_id: str, job: FailoverJobState) -> None:
    """Inside the job's creation: refused unless the VM rests ready_for_failover with no job, and every disk has a
    verified map to compare with; then the VM context is the job's."""
    vm = VmContext.get_by_id(vm_context_id)
    other = vm.active_job_id or getattr(open_failover_of(vm_context_id, excluding=job.id), "id", "")
    if other:
        raise job_already_active(f"VM {vm.name} has an active job {other}; verify it once that job has ended", other)
    if vm.status != VmStatus.READY_FOR_FAILOVER.value:
        raise FailedPrecondition(
            f"VM {vm.name} is {vm.status}; its replicas are verified at rest only while it is ready_for_failover "
            "(replicated, detached from every VM, no job): replicate it, or clean up its failover, first",
            reason="VM_NOT_VERIFIABLE",
            vm_context_id=vm_context_id,
            status=vm.status,
        )
    targets = at_rest.targets_of(vm_context_id)
    transition_vm(vm_context_id, VmStatus.READY_FOR_FAILOVER, active_job_id=job.id)
    blocks = sum(t.blocks for t in targets)
    note(job.id, "start", f"verification at rest of the {len(targets)} replica(s) of {vm.name} ({blocks} blocks)")


def _step_message(name: str, text: str, state: FailoverJobState) -> None:
    state.step(name).message = text


def _readable(disk_id: str) -> str:
    """Why the disk's replica cannot be read as it is ("" when it can)."""
    disk = Disk.get_by_id(disk_id)
    volume = current_volume(disk_id)
    if volume is None or not volume.cloudstack_id:
        return f"disk {disk.key} has no replica volume"
    if disk.capacity_bytes > volume.size_bytes:
        return f"disk {disk.key} grew to {disk.capacity_bytes} bytes since its replica was written"
    return ""


class RestVerification:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        store: FailoverJobStore,
        attachments: OmaAttachments,
        joblog: JobLogService,
        run: Callable[[str], None],
        *,
        workers: int = 0,
        progress_interval_s: float = 1.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.store = store
        self.attachments = attachments
        self.joblog = joblog
        self.run = run  # starts the job's runner (the failover workflow's)
        self.workers = workers
        self.progress_interval_s = progress_interval_s

    async def start(self, vm_context_id: str, request_id: str = "") -> FailoverJobState:
        vm = await self.db.run(VmContext.get_or_none, VmContext.id == vm_context_id)
        if vm is None:
            raise vm_not_found(vm_context_id)
        job = await self.store.create(
            vm_context_id,
            FailoverKind.VERIFY,
            target_vm_name=vm.name,
            request_id=request_id,
            in_tx=lambda job: _claim(vm_context_id, job),
        )
        logger.bind(job_id=job.id, vm_context_id=vm_context_id).info("verification of the replicas at rest started")
        self.run(job.id)
        return job

    def steps(self) -> list[VerifyStep]:
        return [
            Step(
                "attach_replicas",
                self.attach_replicas,
                "check the volumes in CloudStack (each must be detached or on the OMA VM) and the OMA VM's data-volume "
                "slots",
                OUTAGE,
            ),
            Step(
                "read_back", self.read_back, "check the replica's device on the OMA VM (the job log names it)", OUTAGE
            ),
            Step("release_replicas", self.release_replicas, "check the volumes' attachments in CloudStack", OUTAGE),
            Step("report", self.report, "see the job log: each disk found different and its block ranges"),
        ]

    # ---- steps ----------------------------------------------------------------------------------------------
    async def _attach(self, ctx: StepContext) -> list[tuple[RestTarget, str]]:
        """Every target with its device path, its replica attached (again, after a restart) for this job."""
        job_id = ctx.job.id
        targets = await self.db.run(at_rest.targets_of, ctx.job.vm_context_id)
        problems = [p for p in [await self.db.run(_readable, t.disk_id) for t in targets] if p]
        if problems:
            raise FailedPrecondition(
                "; ".join(problems) + ": replicate the VM, then verify again", reason="REPLICA_NOT_READABLE"
            )

        async def queued(place: QueuePlace) -> None:
            await self.joblog.note(job_id, "attach_replicas", place.describe())

        await self.attachments.admit(job_id, len(targets), final_sync=False, on_wait=queued)
        out = []
        for target in targets:
            provisioned = await self.attachments.attach_for_read(job_id, target.disk_id)
            out.append((target, str(provisioned.volume.device_path)))
        return out

    async def attach_replicas(self, ctx: StepContext) -> StepResult:
        attached = await self._attach(ctx)
        paths = ", ".join(f"disk {t.key} as {path}" for t, path in attached)
        return StepResult(message=f"{len(attached)} replica(s) attached to the OMA VM for reading: {paths}")

    async def read_back(self, ctx: StepContext) -> StepResult:
        attached = await self._attach(ctx)
        read = {t.key: 0 for t, _ in attached}
        totals = {t.key: t.blocks for t, _ in attached}

        def progress() -> str:
            return "; ".join(f"disk {k}: {read[k]} of {totals[k]} block(s) read" for k in read)

        async def show() -> None:
            while True:
                await asyncio.sleep(self.progress_interval_s)
                await ctx.save(functools.partial(_step_message, "read_back", progress()))

        mismatched: dict[str, list[list[int]]] = {}
        shower = asyncio.create_task(show(), name=f"verify-progress-{ctx.job.id}")
        try:
            for target, path in attached:
                found = await self._check(ctx.job.id, target, path, lambda k, n: read.__setitem__(k, read[k] + n))
                if found:
                    mismatched[str(target.key)] = [list(r) for r in found]
        finally:
            shower.cancel()
        summary = progress()

        def remember(state: FailoverJobState) -> None:
            state.params["mismatched"] = mismatched

        await ctx.save(remember)
        found_text = f"; {len(mismatched)} disk(s) differ from their map" if mismatched else "; every block matches"
        return StepResult(message=summary + found_text)

    async def _check(
        self, job_id: str, target: RestTarget, path: str, count: Callable[[int, int], None]
    ) -> list[BlockRange]:
        """Read one replica whole, compare, record the outcome on its map; the mismatching ranges."""
        what = f"disk {target.key}: replica at change id {target.change_id} ({path})"
        entry = await self.joblog.begin(job_id, "read_back", f"{what}: reading {target.blocks} block(s)")
        started = time.monotonic()
        reader = ReplicaReader(path, target.capacity_bytes, workers=self.workers)

        def on_progress(nbytes: int) -> None:  # from the reader's threads, after each run of whole blocks
            count(target.key, -(-nbytes // BLOCK_SIZE))

        try:
            hashes = await asyncio.to_thread(reader.hashes, all_blocks(target.capacity_bytes), on_progress)
        except Exception as exc:
            await self.joblog.end(entry, "failed", f"{what}: not read ({exc})")
            raise
        seconds = time.monotonic() - started
        found = at_rest.mismatches(target.hashes, hashes)
        digest = disk_digest(b"".join(hashes[i] for i in range(target.blocks)))
        await self.db.tx(at_rest.record_check, target.map_id, job_id, self.clock.now(), digest, found)
        rate = target.capacity_bytes / MIB / seconds if seconds > 0 else 0.0
        timing = f"{target.capacity_bytes / MIB:.1f} MiB in {seconds:.2f} s ({rate:.0f} MiB/s)"
        if not found:
            await self.joblog.end(entry, "completed", f"{what}: passed, digest {digest}; {timing}")
            return []
        text = at_rest.mismatch_text(target.key, found)
        await self.joblog.end(
            entry, "failed", f"{what}: MISMATCH in {text.split(': ', 1)[1]}; read digest {digest}, map {target.digest}"
        )
        await self.joblog.note(
            job_id,
            "repair",
            f"disk {target.key}: not verified any more (failover refused); its next sync recopies block(s) "
            f"{text.split(': block(s) ', 1)[1]} (the disk whole from an appliance without repair-extents), and that "
            "sync's read-back verifies it again",
            "failed",
        )
        return found

    async def release_replicas(self, ctx: StepContext) -> StepResult:
        disks = await self.db.run(lambda: [d.id for d in Disk.select().where(Disk.vm_context == ctx.job.vm_context_id)])
        detached = await self.attachments.release_job(ctx.job.id, disks)
        return StepResult(message=f"{detached} replica(s) detached from the OMA VM")

    async def report(self, ctx: StepContext) -> StepResult:
        found = dict(ctx.job.params.get("mismatched", {}))
        mismatched = {int(k): [(int(f), int(n)) for f, n in v] for k, v in found.items()}
        if not mismatched:
            return StepResult(message="every replica matches its block-hash map at its current change id")
        parts = [at_rest.mismatch_text(key, ranges) for key, ranges in sorted(mismatched.items())]
        raise ReplicaMismatch(
            f"replica(s) differ at rest from their verified block-hash maps: {'; '.join(parts)}. Failover is refused "
            "for them; each one's next sync recopies those blocks (the disk whole from an appliance without "
            "repair-extents)",
            disks=",".join(str(k) for k in sorted(mismatched)),
            ranges=";".join(
                f"{k}:" + ",".join(f"{f}+{n}" for f, n in ranges) for k, ranges in sorted(mismatched.items())
            ),
        )

    # ---- after a failure or a cancel --------------------------------------------------------------------------
    async def release_after(self, job: FailoverJobState) -> None:
        """The replicas a failed or cancelled verification attached leave the OMA VM (the next start's reconcile
        takes off any this cannot)."""
        if not self.attachments.holds(job.id):
            return
        disks = await self.db.run(lambda: [d.id for d in Disk.select().where(Disk.vm_context == job.vm_context_id)])
        try:
            detached = await self.attachments.release_job(job.id, disks)
        except Exception as exc:
            logger.bind(job_id=job.id).opt(exception=True).warning("replicas not released: {e}", e=exc)
            await self.joblog.note(job.id, "release_replicas", f"replicas not released yet: {exc}", "failed")
            return
        await self.joblog.note(job.id, "release_replicas", f"{detached} replica(s) detached from the OMA VM")
