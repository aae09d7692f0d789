"""The application: every long-lived component, built once from Settings, started and stopped in order.

The composition root: each part gets its collaborators here, once. `server.py` hands each servicer the services it
calls (never the App); nothing here imports grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import timedelta
from pathlib import Path

from loguru import logger

from oma_server.appliances import ApplianceService
from oma_server.bandwidth.governor import BandwidthGovernor
from oma_server.bandwidth.store import BandwidthLimitStore
from oma_server.clock import Clock, SystemClock
from oma_server.cloud_inventory import CloudInventory
from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.config import CloudStackSettings
from oma_server.cloudstack.limits import CloudLimits
from oma_server.cloudstack.simulator import CloudStackSimulator
from oma_server.cluster.bus import ClusterBus
from oma_server.cluster.changes import ChangeFeed
from oma_server.cluster.ownership import ProcessLocks
from oma_server.cluster.routing import ClusterRouting
from oma_server.db.database import Database, redact_url
from oma_server.db.migrations import apply_migrations, current_version
from oma_server.db.sqlite_owner import SqliteOwnership, sqlite_path
from oma_server.failover.at_rest import RestVerification
from oma_server.failover.cutover_runner import CutoverRunner
from oma_server.failover.network_mappings import NetworkMappingService
from oma_server.failover.power import SourcePower
from oma_server.failover.readiness import ReadinessChecker
from oma_server.failover.state_machine import FailoverKind
from oma_server.failover.steps import FailoverSteps, StepSettings
from oma_server.failover.store import FailoverJobStore
from oma_server.failover.workflow import FailoverWorkflow
from oma_server.groups.runs import GroupRuns
from oma_server.groups.store import GroupStore
from oma_server.info import ServerInfo
from oma_server.integrity.maps import unread_on_oma_vm
from oma_server.integrity.verifier import ReplicaVerifier
from oma_server.janitor import Janitor
from oma_server.job_watch import JobWatcher
from oma_server.joblog import JobLogService
from oma_server.jobs import Jobs
from oma_server.lifecycle.completion import MigrationCompletion
from oma_server.lifecycle.deletion import VmDeletion
from oma_server.nbd.manager import NbdExportManager
from oma_server.outbox import CommandOutbox
from oma_server.replication.applier import VmaMessageApplier
from oma_server.replication.repository import highest_revision
from oma_server.replication.service import ReplicationService
from oma_server.replication.store import ReplicationJobStore
from oma_server.replication.workflow import ReplicationWorkflow, vm_after_job
from oma_server.revisions import RevisionReservations
from oma_server.schedules.leadership import Leadership
from oma_server.schedules.scheduler import Limits, Scheduler
from oma_server.schedules.store import ScheduleStore
from oma_server.security.appliance_identity import ApplianceCertificates
from oma_server.security.audit import AuditLog
from oma_server.security.ca import CertificateAuthority
from oma_server.security.nbd_tls import prepare_nbd_tls, write_crl
from oma_server.security.tokens import TokenService
from oma_server.settings import Settings
from oma_server.storage.attachments import OmaAttachments
from oma_server.storage.exports import ExportService
from oma_server.storage.queries import VolumeQueries
from oma_server.storage.volumes import VolumeProvisioner
from oma_server.stream.hub import SessionHub
from oma_server.uninterruptible import finish
from oma_server.version import __version__
from oma_server.vm_contexts.service import VmContextService
from oma_server.watch import Change, WatchHub


async def prepare_database(db: Database) -> int:
    """Connect, apply the pending migrations; the schema version. All `oma-server migrate` does."""
    await db.run(db.check_connection)
    applied = await db.run(apply_migrations, db.peewee)
    version = await db.run(current_version, db.peewee)
    logger.info(
        "database ready: {url} (schema {schema}, {n} migrations applied now)",
        url=redact_url(db.url),
        schema=version,
        n=len(applied),
    )
    return int(version)


class App:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.process_id = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = self.clock.now()
        self.db = Database(settings.database_url)
        self.appliances = ApplianceService(
            self.db,
            credential_hellos=settings.credential_hellos,
            join_tokens=not settings.insecure,
            join_token_ttl=timedelta(seconds=settings.join_token_ttl_s),
        )
        #: the OMA's own CA: appliance certificates and, without --tls-cert, the server's (None with --insecure)
        self.ca = None if settings.insecure else CertificateAuthority(settings.tls_dir)
        #: where appliances dial with their certificate (HOST:PORT), set by the server once its listener is bound
        self.appliance_endpoint = ""
        self.appliance_certificates = ApplianceCertificates(
            self.db,
            self.clock,
            self.ca,
            timedelta(days=settings.appliance_cert_days),
            lambda: self.appliance_endpoint,
        )
        self.tokens = TokenService(self.db)
        self.audit = AuditLog(self.db, timedelta(days=settings.audit_retention_days))
        #: where the first start wrote the initial admin token (None: tokens existed already)
        self.initial_admin_token: Path | None = None
        self.joblog = JobLogService(self.db)
        self.watch = WatchHub()
        self.revisions = RevisionReservations(self.db, self.watch)
        # Failover: jobs are readable (and watchable) at once; the workflow needs CloudStack, built at start.
        self.failover_jobs = FailoverJobStore(self.db, self.clock, self.watch)
        self._build_stream(settings)
        self.replication = ReplicationService(self.db, self.clock, self.jobs, self.outbox)
        self.vms = VmContextService(self.db, self.outbox)
        self.volume_queries = VolumeQueries(self.db)
        self._build_storage(settings)
        self.job_watch = JobWatcher(self.watch)
        self.job_watch.lookups.append(self._replication_change)
        self.job_watch.listers.append(self._replication_changes)
        self.failover: FailoverWorkflow | None = None
        self.cutover: CutoverRunner | None = None  # scheduled cutovers: with the workflow
        self.network_mappings: NetworkMappingService | None = None
        self.power: SourcePower | None = None
        self.verification: RestVerification | None = None
        # Jobs of every kind by id, listed together, cancelled alike.
        self.all_jobs = Jobs(self.db, self.jobs, self.failover_jobs, self.replication, self.vms)
        self.failover_step_settings = StepSettings(driver_injection_command=settings.driver_injection_command)
        self.job_watch.lookups.append(self._failover_change)
        self.job_watch.listers.append(self._failover_changes)
        self.janitor: Janitor | None = None
        self.schema_version = 0
        self._teardown = contextlib.AsyncExitStack()
        self._sqlite_owner: SqliteOwnership | None = None
        self._unread_after_restart: list[str] = []  # completed jobs whose replicas a stop left unverified
        self._build_lifecycle_and_schedules(settings)

    def _build_lifecycle_and_schedules(self, settings: Settings) -> None:
        """Deleting and completing VM contexts; schedules, which start syncs through the replication service (the
        scheduler runs once the workflow does); bandwidth limits, which the governor sends to connected appliances."""
        self.deletion: VmDeletion | None = None  # needs CloudStack: built at start
        self.completion = MigrationCompletion(self.db, self.outbox, self.joblog)
        self.schedules = ScheduleStore(self.db, self.clock, settings.schedule_min_interval_s)
        self.scheduler = Scheduler(
            self.db,
            self.clock,
            self.jobs,
            self.replication,
            self.joblog,
            Limits(settings.max_running_jobs, settings.max_running_jobs_per_appliance),
            tick_s=settings.scheduler_tick_s,
            leadership=Leadership(self.db.url, self.db.kind),
        )
        self.schedules.on_change.append(self.scheduler.wake)
        self.groups = GroupStore(self.db, self.clock)
        self.groups.on_change.append(self.scheduler.wake)  # a group's members are its schedule's VMs
        self.group_runs = GroupRuns(self.db, self.clock, lambda: self.failover)
        self.completion.on_completed.append(lambda _vm_id: self.scheduler.wake())
        self.job_watch.listers.append(self.scheduler.rpo_changes)
        self.bandwidth = BandwidthLimitStore(self.db, self.clock)
        self.governor = BandwidthGovernor(
            self.db, self.clock, self.outbox, self.watch, self.hub.session_ids, settings.scheduler_tick_s
        )
        self.bandwidth.on_change.append(self.governor.wake)
        self.hub.on_session.append(self.governor.session_opened)

    def _build_stream(self, settings: Settings) -> None:
        """The replication jobs' store, the command outbox and the appliance sessions, wired to each other."""
        # The VM context follows its job, in the transaction that makes the job final.
        self.jobs = ReplicationJobStore(
            self.db,
            self.clock,
            self.watch,
            final_hooks=(vm_after_job,),
            flush_interval_s=settings.progress_flush_interval_s,
        )
        self.outbox = CommandOutbox(self.db, self.clock)
        # Several OMA processes on one PostgreSQL (cluster/): who holds which stream, and word between them.
        clustered = self.db.kind == "postgresql"
        self.bus = ClusterBus(self.db.url, clustered)
        self.ownership = ProcessLocks(self.db.url, clustered)
        self.hub = SessionHub(
            self.db,
            self.clock,
            self.appliances,
            self.appliance_certificates,
            self.jobs,
            VmaMessageApplier(self.jobs, self.clock),
            self.outbox,
            process_id=self.process_id,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            ownership=self.ownership,
            ask_release=lambda appliance_id: self.routing.ask_release(appliance_id),
        )
        self.routing = ClusterRouting(self.db, self.bus, self.hub, self.outbox, settings.cluster_poll_interval_s)
        self.changes = ChangeFeed(self.db, self.bus, self.jobs, self.failover_jobs, self.process_id)
        if clustered:  # a job whose appliance streams to another process is read from the database
            self.jobs.is_local = self.hub.connected
        # The session hub acks durable progress, delivers commands and ends revoked appliances' streams.
        self.jobs.ack_through(self.hub.ack)
        self.outbox.deliver_through(self.hub.deliver)
        self.appliances.on_revoked.append(self.hub.revoked)
        self.appliances.after_revoke.append(self._revoke_on_the_data_path)

    def _build_storage(self, settings: Settings) -> None:
        """The simulator (`--cloudstack sim`), the NBD server and its exports; what needs CloudStack comes at start."""
        # CloudStack: the in-process simulator (default) or a real endpoint; the client is built at start, when
        # the simulator's address is known.
        self.simulator: CloudStackSimulator | None = (
            CloudStackSimulator(settings.data_dir / "cloudstack", seed_config=settings.cloudstack_sim_seed)
            if settings.cloudstack == "sim"
            else None
        )
        self.device_root = self.simulator.device_root if self.simulator else settings.device_root
        self.sys_root = self.simulator.sys_root if self.simulator else settings.sys_root
        # NBD over TLS with the CA's certificates (no --insecure): required, unless credential-hello appliances (which
        # have no certificate) are let in — then offered and verified, and plaintext still served.
        nbd_tls = (
            prepare_nbd_tls(
                self.ca,
                settings.data_dir / "nbd",
                settings.nbd_listen,
                list(settings.advertise_addresses),
                required=not settings.credential_hellos,
            )
            if self.ca is not None
            else None
        )
        # Where TLS is required (the default) the export list is hidden too: an appliance reaches only the exports
        # the OMA named to it (manager.py). Where plaintext is still served, hiding it would protect nothing.
        self.nbd = NbdExportManager(
            settings.data_dir / "nbd",
            listen=settings.nbd_listen,
            tls=nbd_tls,
            hide_export_list=nbd_tls is not None and nbd_tls.required,
        )
        self.exports = ExportService(self.db, self.nbd, self.joblog)
        self.cloudstack: CloudStackClient | None = None
        self.cloud: CloudInventory | None = None  # what the CloudStack account can use, for operators
        self.volumes: VolumeProvisioner | None = None
        self.attachments: OmaAttachments | None = None
        self.workflow: ReplicationWorkflow | None = None
        self.verifier: ReplicaVerifier | None = None

    async def start(self) -> None:
        """Start every part in order; each part that started is stopped by `stop()`, also after a failed or
        cancelled start. Parts that own a process or a port (the simulator, nbd-server) finish their own start even
        when cancelled, so that `stop()` knows what to stop."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        database_file = sqlite_path(self.db.url)
        if database_file is not None:  # one OMA process per SQLite database (PostgreSQL takes several)
            self._sqlite_owner = SqliteOwnership(database_file)
            self._sqlite_owner.acquire("serving")
        self.schema_version = await prepare_database(self.db)
        self.initial_admin_token = await self.tokens.ensure_initial_admin(settings.data_dir)
        await self.audit.start()
        self._teardown.push_async_callback(self.audit.stop)
        await self.revisions.start(await self.db.run(highest_revision))
        self._teardown.push_async_callback(self.revisions.stop)
        await self.jobs.start()
        self._teardown.push_async_callback(self.jobs.stop)
        await self._start_storage()
        self._teardown.push_async_callback(self.ownership.close)
        await self.bus.start()
        self._teardown.push_async_callback(self.bus.stop)
        await self.routing.start()
        self._teardown.push_async_callback(self.routing.stop)
        self._teardown.push_async_callback(self.changes.stop)
        await self.hub.start()
        self._teardown.push_async_callback(self.hub.stop)
        await self.governor.start()
        self._teardown.push_async_callback(self.governor.stop)
        # Workflow tasks run only from here on, and stop before anything they use (nbd-server, CloudStack).
        if self.workflow is not None:
            self._teardown.push_async_callback(self.workflow.stop)
            await self.workflow.resume_in_flight()
            await self.workflow.release_after_restart(self._unread_after_restart)
        if self.failover is not None:
            self._teardown.push_async_callback(self.failover.stop)
            await self.failover.resume()
            self._teardown.push_async_callback(self.group_runs.stop)  # before the failovers it waits on
            await self.group_runs.resume()
        if self.cutover is not None:  # after resume: a cutover due while the OMA was down starts at its first pass
            await self.cutover.start()
            self._teardown.push_async_callback(self.cutover.stop)
        if self.janitor is not None:
            await self.janitor.start()
            self._teardown.push_async_callback(self.janitor.stop)
        await self.scheduler.start()
        self._teardown.push_async_callback(self.scheduler.stop)

    async def _write_crl(self) -> bool:
        """The data path's CRL (security/nbd_tls.py) from the revoked certificates; True if it changed."""
        if self.ca is None or self.nbd.tls is None:
            return False
        revoked = await self.appliance_certificates.revoked()
        return await asyncio.to_thread(write_crl, self.ca, self.nbd.tls.certificates_dir, revoked)

    async def _revoke_on_the_data_path(self, appliance_id: str) -> None:
        """The new CRL written and read by nbdkit. The revocation is committed already: a restart that fails is
        logged, not the call's failure — an nbdkit that did not come back serves nobody, and the supervisor starts it
        again (with the new CRL) as after any exit."""
        try:
            if await self._write_crl():
                await self.nbd.reload_tls(f"the revocation of appliance {appliance_id}")
        except Exception:
            logger.bind(appliance_id=appliance_id).opt(exception=True).error(
                "the data path's CRL was not written or nbdkit did not restart with it; the supervisor restarts an "
                "nbdkit that exited, and the next revocation or start writes the CRL again"
            )

    async def _start_storage(self) -> None:
        if self.simulator is not None:
            await finish(self.simulator.start())
            self._teardown.push_async_callback(self.simulator.stop)
            cs_settings = self.simulator.settings()
        else:
            cs_settings = CloudStackSettings.from_env(self.settings.cloudstack)
        self.cloudstack = CloudStackClient(cs_settings)
        self._teardown.push_async_callback(self.cloudstack.close)
        self.cloud = CloudInventory(self.cloudstack, self.settings.failover_template)
        limits = CloudLimits(self.cloudstack)
        self.volumes = VolumeProvisioner(
            self.db, self.cloudstack, self.joblog, self.device_root, sys_root=self.sys_root, limits=limits
        )
        self.attachments = OmaAttachments(self.db, self.cloudstack, limits, self.volumes, self.exports, self.joblog)
        self.attachments.claims = self.ownership if self.ownership.enabled else None
        self.verifier = ReplicaVerifier(self.db, self.clock, self.joblog)
        self.workflow = ReplicationWorkflow(
            self.db, self.clock, self.jobs, self.replication, self.vms, self.attachments, self.joblog, self.verifier
        )
        self.workflow.home_only = self.bus.enabled
        self.replication.start_through(self.workflow.start_job)
        self.scheduler.settle_through(self.workflow.settled)
        self.deletion = VmDeletion(self.db, self.cloudstack, self.attachments, self.joblog)
        self.deletion.on_deleted.append(lambda _vm_id: self.scheduler.wake())
        self._build_failover(self.cloudstack, self.volumes, self.attachments, self.workflow)
        assert self.failover is not None
        clustered = self.ownership.enabled
        self.janitor = Janitor(
            self.db,
            self.clock,
            self.jobs,
            self.workflow,
            self.failover,
            interval_s=self.settings.janitor_interval_s,
            locks=self.ownership if clustered else None,
        )
        for runner in (self.workflow.runner, self.failover.runner, self.group_runs.runner) if clustered else ():
            runner.claims = self.ownership  # each job's steps run in one OMA process at a time
            self.ownership.on_lost.append(runner.cancel_all)
        # An appliance's answer to a start or cancel may end its job's wait (a refusal, a job it does not run).
        self.outbox.on_result("start_replication", self.janitor.on_answer)
        self.outbox.on_result("cancel_job", self.janitor.on_answer)
        await self.volumes.reconcile()
        # before nbd-server serves the recorded exports: replicas of finished jobs leave the OMA VM
        # ... but not those a stop left unverified: they are read back first (release_after_restart, at start)
        unread = await self.db.run(unread_on_oma_vm)
        open_jobs = [(j.id, [d.disk_id for d in j.disks]) for j in self.jobs.open_jobs()]
        await self.attachments.reconcile([*open_jobs, *unread.items()])
        # with several OMA processes, only those this process took over (the others' are read back by their own)
        self._unread_after_restart = [job_id for job_id in unread if self.attachments.holds(job_id)]
        self._teardown.push_async_callback(self.nbd.stop)  # safe before or after a failed start
        crl_changed = await self._write_crl()
        await finish(self.exports.start())
        if crl_changed and self.nbd.adopted:  # a taken-over nbdkit read the CRL before revocations made while down
            await finish(self.nbd.reload_tls("appliances revoked while the OMA was down"))

    async def begin_shutdown(self) -> None:
        """Tell appliance streams to end; the server's grace period lets them drain."""
        await self.hub.stop()

    async def stop(self) -> None:
        """Stop what started, in reverse order (janitor, workflows, streams, nbd-server, CloudStack, the simulator,
        the pending batched progress writes, revision reservations), and close the database."""
        try:
            await self._teardown.aclose()
        finally:
            self.db.close()
            if self._sqlite_owner is not None:
                self._sqlite_owner.release()

    async def _replication_change(self, job_id: str) -> Change | None:
        from oma_server.errors import NotFound

        try:
            job = await self.jobs.get(job_id)
        except NotFound:
            return None
        return Change(job.revision, "replication", job.id, job.vm_context_id, job, job.final)

    async def _replication_changes(self, include_finished: bool) -> list[Change]:
        if include_finished:
            page = await self.jobs.list_jobs(1000, "")
            jobs = page.jobs
        else:
            jobs = self.jobs.open_jobs()
        return [Change(j.revision, "replication", j.id, j.vm_context_id, j, j.final) for j in jobs]

    def _build_failover(
        self,
        cloudstack: CloudStackClient,
        volumes: VolumeProvisioner,
        attachments: OmaAttachments,
        workflow: ReplicationWorkflow,
    ) -> None:
        readiness = ReadinessChecker(
            self.db,
            cloudstack,
            self.jobs,
            self.hub.reachable,
            failover_template=self.settings.failover_template,
            limits=attachments.limits,
            read_back=workflow.settled,
        )
        steps = FailoverSteps(
            self.db,
            cloudstack,
            volumes,
            attachments,
            self.joblog,
            self.outbox,
            self.jobs,
            workflow.start_job,
            workflow.settled,
            readiness,
            self.failover_step_settings,
            clock=self.clock,
        )
        self.failover = FailoverWorkflow(
            self.db,
            self.clock,
            self.failover_jobs,
            readiness,
            steps,
            self.process_id,
            cancel_replication=self.replication.cancel,
        )
        self.all_jobs.cancel_failovers_through(self.failover.cancel)
        self.cutover = CutoverRunner(self.failover, self.jobs, tick_s=self.settings.scheduler_tick_s)
        self.hub.on_session.append(lambda _appliance_id: self.cutover.wake() if self.cutover else None)
        self.power = SourcePower(self.db, self.failover_jobs, self.failover.resume_job, self.hub.reachable)
        self.verification = RestVerification(
            self.db, self.clock, self.failover_jobs, attachments, self.joblog, self.failover.resume_job
        )
        steps.declared.update({step.name: step for step in self.verification.steps()})
        self.failover.on_unfinished[FailoverKind.VERIFY] = self.verification.release_after
        self.network_mappings = NetworkMappingService(self.db, cloudstack)

    async def _failover_change(self, job_id: str) -> Change | None:
        job = await self.failover_jobs.lookup(job_id)
        return None if job is None else self.failover_jobs.change_of(job)

    async def _failover_changes(self, include_finished: bool) -> list[Change]:
        if include_finished:
            jobs = (await self.failover_jobs.list_jobs(1000, "")).jobs
        else:
            jobs = await self.failover_jobs.open_jobs(include_scheduled=True)
        return [self.failover_jobs.change_of(j) for j in jobs]

    def info(self) -> ServerInfo:
        return ServerInfo(
            version=__version__,
            database_kind=self.db.kind,
            cloudstack_kind="sim" if self.settings.cloudstack == "sim" else "api",
            started_at=self.started_at,
            schema_version=self.schema_version,
            process_id=self.process_id,
        )
