"""The replication workflow: from StartReplication to a job the appliance copies into NBD exports.

start (refused at once when a disk is larger than the cloud creates volumes, or the job needs more data-volume slots
than the OMA VM has) → (VM context → replicating, job pending, in one transaction) → provisioning: the job waits for
a free data-volume slot on the OMA VM per disk (storage/attachments.py: its place shown in current_operation and the
job log), then for every disk in parallel ensures its CloudStack volume (create, grow, attach to the OMA VM, find its
device) and its NBD export → the copy command is queued for the appliance with each disk's target and previous
change id → the stream takes over. When the job ends, the VM context follows in the same transaction
(ready_for_failover, or failed), and then its replicas leave the OMA VM (export removed, volume detached) and its
slots go to the next job in the queue. A job whose attach CloudStack refuses because the OMA VM is full goes back to
the queue (the refusal tells the limit to an account that could not read it).

Incremental runs reuse volumes and exports and send each disk's last change id; a disk without one, or whose
capacity changed since it was recorded (resized), gets a full copy — that disk only, with the reason logged
(disk_plans.py). Each disk is read back and verified as soon as its sync completed (integrity/verifier.py); a
replica found different from the source's hashes gets one repair sync, started here, that recopies those blocks.
After an OMA restart, jobs still pending or provisioning run their (idempotent) steps again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import OrderedDict

from loguru import logger

from oma_server.clock import Clock
from oma_server.cloudstack.errors import CloudStackError
from oma_server.db.database import Database
from oma_server.db.models import Appliance, VmContext, utcnow
from oma_server.engine import OUTAGE, JobRunner, OnRetry, Step, run_step
from oma_server.errors import DomainError, FailedPrecondition, InvalidArgument, job_already_active
from oma_server.integrity import maps
from oma_server.integrity.blocks import describe
from oma_server.integrity.verifier import JobVerification, ReplicaVerifier
from oma_server.joblog import JobLogService, note
from oma_server.replication.disk_plans import REPAIR_CAPABILITY, plan_disks, plan_notes
from oma_server.replication.service import ReplicationService
from oma_server.replication.state_machine import DEFAULT_OPERATION, JobState, JobStatus
from oma_server.replication.store import ReplicationJobStore
from oma_server.replication.takeover import ReplicaTakeover
from oma_server.storage.attachments import OmaAttachments, QueuePlace
from oma_server.storage.volumes import disk_too_large, size_limits
from oma_server.vm_contexts.service import VmContextService, VmView
from oma_server.vm_contexts.state_machine import VmStatus, transition_vm

KINDS = ("initial", "incremental", "final")
STARTABLE = (VmStatus.DISCOVERED, VmStatus.READY_FOR_FAILOVER, VmStatus.FAILED)
#: how often a job goes back to the queue after CloudStack refused an attach because the OMA VM was full
MAX_REQUEUES = 3
#: finished jobs whose release is remembered (settled() of a job that ended long ago returns at once)
RELEASES_REMEMBERED = 10_000


class OmaFull(Exception):
    """CloudStack refused an attach: the OMA VM holds its maximum of data volumes."""


def vm_after_job(job: JobState) -> None:
    """The VM context's status when its replication job ends (runs in the job's final transaction)."""
    vm = VmContext.get_or_none(VmContext.id == job.vm_context_id)
    if vm is None:
        return
    if vm.active_job_id != job.id:
        # Not the job the VM is bound to: a final sync belongs to its failover job, which sets the status; the sync
        # is still the VM's last completed replication (its change ids are what the disks now hold).
        if job.status == JobStatus.COMPLETED:
            VmContext.update(last_completed_job_id=job.id, updated_at=utcnow()).where(VmContext.id == vm.id).execute()
        return
    if job.status == JobStatus.COMPLETED:
        transition_vm(vm.id, VmStatus.READY_FOR_FAILOVER, active_job_id="", last_completed_job_id=job.id)
    elif job.started_at is None:
        # Nothing was copied: the replicas are as the last completed run left them.
        back = VmStatus.READY_FOR_FAILOVER if vm.last_completed_job_id else VmStatus.DISCOVERED
        transition_vm(vm.id, back, active_job_id="")
    else:
        # A partial copy leaves the replicas between two change ids: not fit for failover until a run completes.
        transition_vm(vm.id, VmStatus.FAILED, active_job_id="")


class ReplicationWorkflow:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        jobs: ReplicationJobStore,
        service: ReplicationService,
        vms: VmContextService,
        attachments: OmaAttachments,
        joblog: JobLogService,
        verifier: ReplicaVerifier | None = None,
    ) -> None:
        self.db = db
        self.verifier = verifier
        self.clock = clock
        self.jobs = jobs
        self.service = service
        self.vms = vms
        self.attachments = attachments
        self.joblog = joblog
        self.runner = JobRunner("replication")
        self._provision_step: Step[JobState, None] = Step(
            "provision",
            self._provision,
            "check the replica volumes in CloudStack (ListVolumes) and the OMA VM's attachments",
            OUTAGE,
        )
        self._releases: dict[str, asyncio.Task[None]] = {}
        # Jobs that end are seen on the watch hub, after their commit, whoever ended them (the appliance's events,
        # a cancel, a failure here); each gets its replicas released once.
        self._finished = jobs.watch.subscribe(lambda c: c.job_kind == "replication" and c.final)
        # Disks whose sync completed in a job still running: each is read back at once (integrity/verifier.py).
        self._disks_done = jobs.watch.subscribe(
            lambda c: (
                c.job_kind == "replication"
                and not c.final
                and c.state is not None
                and any(d.completed for d in c.state.disks)
            )
        )
        self._releaser: asyncio.Task[None] | None = None
        self._early_verifier: asyncio.Task[None] | None = None
        self._released: OrderedDict[str, asyncio.Event] = OrderedDict()
        #: several OMA processes: a job's replicas are read back and released by the process that attached them
        #: (its slots and exports are this process's), whichever process applied the appliance's events
        self.home_only = False
        self._takeover = ReplicaTakeover(
            db, jobs, service, vms, attachments, joblog, verifier, release=self.release_after_restart
        )

    async def start_job(self, vm_context_id: str, kind: str, request_id: str, retry_of: str) -> JobState:
        if kind and kind not in KINDS:
            raise InvalidArgument(f"unknown replication kind {kind!r}", reason="KIND_INVALID")
        view = await self.vms.get(vm_context_id)
        vm = view.vm
        active = [j for j in self.jobs.open_jobs() if j.vm_context_id == vm_context_id]
        # A final sync runs inside a live failover, which holds the VM's active job itself.
        if active or (vm.active_job_id and kind != "final"):
            job_id = active[0].id if active else vm.active_job_id
            raise job_already_active(
                f"VM {vm.name} already has an active job {job_id}; wait for it or cancel it first",
                job_id,
                vm_context_id=vm_context_id,
            )
        if VmStatus(vm.status) not in STARTABLE and kind != "final":
            raise FailedPrecondition(
                f"VM {vm.name} is {vm.status}; replication starts only from "
                f"{', '.join(s.value for s in STARTABLE)} (clean up the failover first)",
                reason="VM_NOT_REPLICABLE",
                vm_context_id=vm_context_id,
                status=vm.status,
            )
        if not kind:
            kind = "incremental" if any(d.disk.last_change_id for d in view.disks) else "initial"
        await self._check_fits_cloud(view)
        appliance = await self.db.run(Appliance.get_or_none, Appliance.id == vm.appliance_id)
        disks = plan_disks(view, kind, repair_blocks=REPAIR_CAPABILITY in (appliance.capabilities if appliance else []))

        def mark_vm(job: JobState) -> None:
            if kind != "final":
                transition_vm(vm.id, VmStatus.REPLICATING, active_job_id=job.id)
            note(job.id, "start", f"{kind} replication of {vm.name} ({len(disks)} disk(s)) requested")
            plan_notes(job.id, disks)

        job = await self.jobs.create(
            vm_context_id=vm_context_id,
            appliance_id=vm.appliance_id,
            kind=kind,
            disks=disks,
            request_id=request_id or None,
            retry_of=retry_of,
            in_tx=mark_vm,
        )
        self._spawn(job.id)
        return job

    async def _check_fits_cloud(self, view: VmView) -> None:
        """Refuse now what CloudStack would refuse later: a disk over its volume-size limits, more disks than the
        OMA VM can hold at once."""
        self.attachments.pool.check_fits(len(view.disks))
        sizes = await size_limits(self.attachments.limits)
        for d in view.disks if sizes else ():
            problem = sizes.problem(d.disk.capacity_bytes) if sizes else ""
            if problem:
                raise disk_too_large(d.disk, problem)

    def _spawn(self, job_id: str) -> None:
        self._start_releaser()
        self.runner.start(job_id, lambda: self._run(job_id))

    def running(self, job_id: str) -> bool:
        """Whether this process runs the job's provisioning task right now."""
        return self.runner.running(job_id)

    def resume_job(self, job_id: str) -> None:
        """Run a pending or provisioning job's (idempotent) provisioning steps again."""
        self._spawn(job_id)

    async def resume_in_flight(self) -> list[str]:
        """After a restart: jobs that had not reached the appliance run their provisioning steps again."""
        self._start_releaser()
        resumed = [j.id for j in self.jobs.open_jobs() if j.status in (JobStatus.PENDING, JobStatus.PROVISIONING)]
        for job_id in resumed:
            logger.bind(job_id=job_id).info("resuming provisioning after a restart")
            self._spawn(job_id)
        return resumed

    async def release_after_restart(self, job_ids: list[str]) -> None:
        """Completed jobs a stop caught between their completion and their replicas' release (the read-back cut
        short): verified and released now, as at their end."""
        for job_id in job_ids:
            if job_id in self._releases or self._release_event(job_id).is_set():
                continue
            job = await self.jobs.get(job_id)
            logger.bind(job_id=job_id).info("reading back the replicas a stop left unverified, then releasing them")
            self._releases[job_id] = task = asyncio.create_task(self._release(job), name=f"release-{job_id}")
            task.add_done_callback(functools.partial(self._forget_release, job_id))

    async def take_over_orphans(self) -> list[str]:
        """Several OMA processes: the replicas of a process that is gone taken over here (replication/takeover.py);
        the ids of the jobs whose replicas this process took."""
        return await self._takeover.run()

    async def stop(self) -> None:
        self._finished.close()
        self._disks_done.close()
        await self.runner.stop()
        if self.verifier is not None:
            await self.verifier.stop()
        loops = [t for t in (self._releaser, self._early_verifier) if t is not None]
        tasks = [*self._releases.values(), *loops]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def wait(self, job_id: str) -> None:
        """Wait until the job's provisioning task ends (tests and the demo)."""
        await self.runner.wait(job_id)

    async def settled(self, job_id: str) -> None:
        """Wait until a finished job's replicas have left the OMA VM (tests, the demo, benchmarks)."""
        await self.wait(job_id)
        if (await self.jobs.get(job_id)).final and (self.attachments.holds(job_id) or job_id in self._releases):
            await self._release_event(job_id).wait()

    # ---- the OMA VM's slots ---------------------------------------------------------------------------------
    def _release_event(self, job_id: str) -> asyncio.Event:
        event = self._released.get(job_id)
        if event is None:
            event = self._released[job_id] = asyncio.Event()
            while len(self._released) > RELEASES_REMEMBERED:
                self._released.popitem(last=False)
        return event

    def _forget_release(self, job_id: str, _task: object) -> None:
        self._releases.pop(job_id, None)

    def _start_releaser(self) -> None:
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.create_task(self._release_finished(), name="replication-releaser")
        if self.verifier is not None and (self._early_verifier is None or self._early_verifier.done()):
            self._early_verifier = asyncio.create_task(self._verify_completed_disks(), name="replication-read-back")

    async def _verify_completed_disks(self) -> None:
        assert self.verifier is not None
        while True:
            change = await self._disks_done.next()
            job: JobState | None = change.state if change is not None else None
            if job is None:
                continue
            if self.home_only and not self.attachments.holds(job.id):
                continue
            for disk in job.disks:
                if disk.completed:
                    self.verifier.verify_disk_soon(job.id, disk.disk_id)

    async def _release_finished(self) -> None:
        while True:
            change = await self._finished.next()
            job: JobState | None = change.state if change is not None else None
            if job is None or job.id in self._releases or self._release_event(job.id).is_set():
                continue
            if self.home_only and not self.attachments.holds(job.id):
                continue  # attached by another OMA process, which releases it
            self._releases[job.id] = task = asyncio.create_task(self._release(job), name=f"release-{job.id}")
            task.add_done_callback(functools.partial(self._forget_release, job.id))

    async def _release(self, job: JobState) -> None:
        """A finished job's replicas off the OMA VM, its slots to the next job."""
        provisioning = self.runner.task(job.id)
        if provisioning is not None and provisioning is not asyncio.current_task():
            if job.status == JobStatus.CANCELLED:
                provisioning.cancel()  # cancelled while queued or provisioning: stop it where it is
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await provisioning
        found = JobVerification()
        if job.status != JobStatus.COMPLETED and self.verifier is not None:
            await self.verifier.forget(job.id)
        if job.status == JobStatus.COMPLETED and self.verifier is not None:
            # The replicas are read back while they are still on the OMA VM.
            try:
                found = await self.verifier.verify_job(job.id)
            except Exception as exc:  # the disks stay unverified at this change id; the job log says so
                logger.bind(job_id=job.id).opt(exception=True).warning("verification failed: {e}", e=exc)
                await self.joblog.note(job.id, "verify", f"replicas not verified: {exc}", "failed")
        try:
            detached = await self.attachments.release_job(job.id, [d.disk_id for d in job.disks])
        except Exception as exc:  # the next start's reconcile takes them off
            logger.bind(job_id=job.id).opt(exception=True).warning("replicas not released: {e}", e=exc)
            await self.joblog.note(job.id, "release_volumes", f"replicas not released yet: {exc}", "failed")
            return
        finally:
            self._release_event(job.id).set()
        pool = self.attachments.pool
        free = "" if pool.capacity is None else f"; {pool.capacity - pool.in_use} of {pool.capacity} slots free"
        await self.joblog.note(
            job.id, "release_volumes", f"{detached} replica(s) detached from the OMA VM, exports retired{free}"
        )
        if found.mismatched and job.kind != "final":  # a final sync's failover refuses to deploy on it instead
            await self._repair(job, found)

    async def _repair(self, job: JobState, found: JobVerification) -> None:
        """A sync whose read-back found blocks different from the source's hashes: a repair sync starts at once, an
        incremental that recopies exactly those blocks (plan_disks) and verifies them again. Once: when the repair's
        own read-back finds blocks different again, it stops and says so (the gate keeps refusing failover)."""
        parts = "; ".join(f"disk {key}: block(s) {describe(ranges)}" for key, ranges in found.mismatched.values())
        repeated = bool(job.retry_of) and await self.db.run(maps.found_different_from_source, job.retry_of)
        if repeated:
            await self.joblog.note(
                job.id,
                "repair",
                f"the replica still differs from the source after its blocks were recopied ({parts}): no further "
                "automatic repair, and failover stays refused for these disks. Check the OMA's storage and the "
                "appliance (a wrong hash from the appliance looks the same), then run an incremental replication",
                "failed",
            )
            return
        try:
            repair = await self.start_job(job.vm_context_id, "incremental", "", retry_of=job.id)
        except DomainError as exc:
            await self.joblog.note(
                job.id,
                "repair",
                f"the replica differs from the source ({parts}); the repair sync cannot start now ({exc.message}): "
                "the VM's next sync recopies those blocks",
                "failed",
            )
            return
        await self.joblog.note(
            job.id,
            "repair",
            f"the replica differs from the source ({parts}): repair sync {repair.id} started; it recopies exactly "
            "those blocks and verifies them again",
            "failed",
        )

    async def _wait_for_slots(self, job: JobState) -> None:
        """Hold a slot per disk; while the OMA VM is full, the job's current_operation says where it stands."""
        started = asyncio.get_running_loop().time()
        queued: list[QueuePlace] = []

        async def show(place: QueuePlace) -> None:
            if not queued:
                await self.joblog.note(job.id, "queue", place.describe())
            queued.append(place)
            await self.jobs.update(job.id, lambda _: None, operation=place.describe())

        if await self.attachments.admit(job.id, len(job.disks), final_sync=job.kind == "final", on_wait=show):
            seconds = asyncio.get_running_loop().time() - started
            await self.joblog.note(job.id, "queue", f"{len(job.disks)} data-volume slot(s) free after {seconds:.1f}s")
            await self.jobs.update(job.id, lambda _: None, operation=DEFAULT_OPERATION[JobStatus.PROVISIONING])

    async def _run(self, job_id: str) -> None:
        log = logger.bind(job_id=job_id)
        try:
            job = await self.jobs.get(job_id)
            if job.status == JobStatus.PENDING:
                job = await self.jobs.transition(job_id, JobStatus.PROVISIONING)
            if job.status != JobStatus.PROVISIONING:
                return
            await run_step(self._provision_step, job, self._retrying(job_id))
            log.info("job handed to appliance {a}", a=job.appliance_id)
        except asyncio.CancelledError:
            raise
        except DomainError as exc:
            await self._fail(job_id, exc)
        except Exception as exc:
            log.opt(exception=True).error("provisioning failed unexpectedly")
            await self._fail(job_id, exc)

    async def _provision(self, job: JobState) -> None:
        """Volumes attached, exports served, the copy command queued: idempotent, so an outage or a restart runs it
        again from the top."""
        view = await self.vms.get(job.vm_context_id)
        results = await self._provision_all(job)
        targets = {disk_id: (uri, resized, new) for disk_id, uri, resized, new in results}

        def set_targets(state: JobState) -> None:
            for disk in state.disks:
                uri, resized, new = targets[disk.disk_id]
                disk.nbd_uri = uri
                disk.target_is_new = new
                if resized and disk.mode != "full":
                    disk.mode = "full"
                    disk.previous_change_id = ""
                    disk.full_copy_reason = "the replica volume was grown to the disk's new size"

        await self.jobs.update(job.id, set_targets, operation="Volumes and exports ready")
        capacities = {d.disk.id: d.disk.capacity_bytes for d in view.disks}
        await self.service.dispatch(job.id, view.vm.vm_uuid, capacities)

    def _retrying(self, job_id: str) -> OnRetry:
        async def note_retry(attempt: int, error: BaseException, delay: float) -> None:
            what = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
            logger.bind(job_id=job_id).warning("provisioning attempt {n} failed, retrying: {e}", n=attempt, e=what)
            await self.joblog.note(
                job_id, "provision", f"attempt {attempt} failed ({what}); trying again in {delay:.0f}s"
            )

        return note_retry

    async def _provision_all(self, job: JobState) -> list[tuple[str, str, bool, bool]]:
        """Slots first, then every disk in parallel; back to the queue when CloudStack says the OMA VM is full."""
        for attempt in range(MAX_REQUEUES + 1):
            await self._wait_for_slots(job)
            results = await asyncio.gather(
                *(self._provision_disk(job.id, d.disk_id) for d in job.disks), return_exceptions=True
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                return results  # type: ignore[return-value]
            other = [f for f in failures if not isinstance(f, OmaFull)]
            if other or attempt == MAX_REQUEUES:
                raise (other or failures)[0]
            await self.attachments.release_job(job.id, [d.disk_id for d in job.disks])
            await self.joblog.note(
                job.id, "queue", f"CloudStack refused an attach: {failures[0]}; back in the queue for the OMA VM"
            )
        raise AssertionError("unreachable")

    async def _provision_disk(self, job_id: str, disk_id: str) -> tuple[str, str, bool, bool]:
        try:
            provisioned, export = await self.attachments.attach(job_id, disk_id)
        except CloudStackError as exc:
            if await self.attachments.learn_from(exc):
                raise OmaFull(exc.message) from exc
            raise
        return disk_id, export.uri, provisioned.resized, provisioned.created

    async def _fail(self, job_id: str, exc: BaseException) -> None:
        current = self.jobs.cached(job_id)
        if current is None or current.final or current.status == JobStatus.CANCELLING:
            return  # cancelled meanwhile: nothing to fail
        reason = getattr(exc, "reason", "PROVISIONING_FAILED")
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        logger.bind(job_id=job_id).warning("job failed while provisioning: {m}", m=message)
        with contextlib.suppress(DomainError):
            await self.jobs.transition(job_id, JobStatus.FAILED, error_reason=reason, error_message=message)
