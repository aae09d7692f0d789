"""The one gRPC server factory and the serve loop (start, signals, graceful shutdown).

Options follow what long-lived appliance streams need: keepalive pings every 3.5 minutes (below the idle cut of
common load balancers), clients allowed to ping every 30 s, message size limits, and a cap on concurrent RPCs that
answers RESOURCE_EXHAUSTED past it. Shutdown order: health NOT_SERVING, streams told to drain, stop with a grace
period, then pending database writes finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
from datetime import timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from loguru import logger

from oma.v1 import (
    access_pb2,
    access_pb2_grpc,
    appliance_identity_pb2,
    appliance_identity_pb2_grpc,
    appliance_pb2,
    appliance_pb2_grpc,
    bandwidth_pb2,
    bandwidth_pb2_grpc,
    cloud_pb2,
    cloud_pb2_grpc,
    failover_pb2,
    failover_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    machine_group_pb2,
    machine_group_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    server_info_pb2,
    server_info_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.api.access import AccessInterceptor
from oma_server.api.appliance_identity import ApplianceIdentityServicer
from oma_server.api.appliances import ApplianceServicer
from oma_server.api.bandwidth import BandwidthServicer
from oma_server.api.cloud import CloudServicer
from oma_server.api.failover import FailoverServicer, NetworkMappingServicer
from oma_server.api.gateway import GatewayServicer
from oma_server.api.http.auth import HttpAuth
from oma_server.api.http.dashboard import Dashboard
from oma_server.api.http.scrape import Scraper
from oma_server.api.http.server import HttpServer
from oma_server.api.idempotency import IdempotencyInterceptor
from oma_server.api.machine_groups import MachineGroupServicer
from oma_server.api.reflection import SourceInfoPool
from oma_server.api.replication import JobServicer, ReplicationServicer
from oma_server.api.schedules import RpoReader, ScheduleServicer
from oma_server.api.server_info import ServerInfoServicer
from oma_server.api.status import ErrorMappingInterceptor
from oma_server.api.storage import NbdExportServicer, VolumeServicer
from oma_server.api.tokens import AccessServicer
from oma_server.api.vm_contexts import VmContextServicer, VmLifecycle
from oma_server.app import App
from oma_server.idempotency import IdempotencyStore
from oma_server.omactl import config as omactl_config
from oma_server.omactl.config import OMACTL_CONFIG_FILE
from oma_server.security.ca import CertificateAuthority
from oma_server.security.server_tls import ServerTls, appliance_endpoint, dial_endpoint
from oma_server.security.tokens import read_admin_token
from oma_server.stop_signals import StopSignals
from oma_server.version import __version__
from vma.v1 import agent_service_pb2
from vma_client_stubs.connection import Endpoint

KEEPALIVE_TIME_MS = 210_000
KEEPALIVE_TIMEOUT_MS = 20_000
MIN_CLIENT_PING_INTERVAL_MS = 30_000


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_concurrent_streams", 10_000),
        ("grpc.so_reuseport", 0),
    ]


# Every service the OMA serves, with its full name for health and reflection.
SERVICE_NAMES: list[str] = [
    server_info_pb2.DESCRIPTOR.services_by_name["ServerInfoService"].full_name,
    access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    appliance_pb2.DESCRIPTOR.services_by_name["ApplianceService"].full_name,
    appliance_identity_pb2.DESCRIPTOR.services_by_name["ApplianceIdentityService"].full_name,
    vm_context_pb2.DESCRIPTOR.services_by_name["VmContextService"].full_name,
    replication_pb2.DESCRIPTOR.services_by_name["ReplicationService"].full_name,
    job_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    storage_pb2.DESCRIPTOR.services_by_name["VolumeService"].full_name,
    storage_pb2.DESCRIPTOR.services_by_name["NbdExportService"].full_name,
    failover_pb2.DESCRIPTOR.services_by_name["FailoverService"].full_name,
    schedule_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
    bandwidth_pb2.DESCRIPTOR.services_by_name["BandwidthService"].full_name,
    machine_group_pb2.DESCRIPTOR.services_by_name["MachineGroupService"].full_name,
    failover_pb2.DESCRIPTOR.services_by_name["NetworkMappingService"].full_name,
    cloud_pb2.DESCRIPTOR.services_by_name["CloudService"].full_name,
    gateway_pb2.DESCRIPTOR.services_by_name["VmaGatewayService"].full_name,
]

# The VMA agent's own service is served by the agent, but its descriptors are registered for reflection so
# `grpcurl describe vma.v1...` works against the OMA too.
REFLECTION_ONLY: list[str] = [agent_service_pb2.DESCRIPTOR.services_by_name["VmaAgentService"].full_name]


def _register_servicers(server: grpc.aio.Server, app: App) -> None:
    """Each servicer gets the services it calls, nothing else; those the App builds at start (they need CloudStack)
    are handed over as a lookup that answers None until then (the servicer answers UNAVAILABLE)."""
    server_info_pb2_grpc.add_ServerInfoServiceServicer_to_server(ServerInfoServicer(app.info), server)
    ca_fingerprint = app.ca.fingerprint if app.ca is not None else ""
    appliance_pb2_grpc.add_ApplianceServiceServicer_to_server(ApplianceServicer(app.appliances, ca_fingerprint), server)
    appliance_identity_pb2_grpc.add_ApplianceIdentityServiceServicer_to_server(
        ApplianceIdentityServicer(app.appliance_certificates), server
    )
    rpo = RpoReader(app.db, app.clock)
    lifecycle = VmLifecycle(lambda: app.deletion, app.completion, lambda: app.verification)
    vm_contexts = VmContextServicer(app.vms, app.appliances, app.hub.reachable, lambda: app.power, lifecycle, rpo)
    vm_context_pb2_grpc.add_VmContextServiceServicer_to_server(vm_contexts, server)
    replication = ReplicationServicer(app.replication, app.jobs, app.all_jobs, app.vms)
    replication_pb2_grpc.add_ReplicationServiceServicer_to_server(replication, server)
    jobs = JobServicer(app.all_jobs, app.job_watch, app.joblog, app.vms)
    job_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
    storage_pb2_grpc.add_VolumeServiceServicer_to_server(VolumeServicer(app.volume_queries, app.vms), server)
    storage_pb2_grpc.add_NbdExportServiceServicer_to_server(NbdExportServicer(app.exports), server)
    failover = FailoverServicer(lambda: app.failover, app.failover_jobs, app.all_jobs, app.vms)
    failover_pb2_grpc.add_FailoverServiceServicer_to_server(failover, server)
    mappings = NetworkMappingServicer(lambda: app.network_mappings)
    failover_pb2_grpc.add_NetworkMappingServiceServicer_to_server(mappings, server)
    cloud_pb2_grpc.add_CloudServiceServicer_to_server(CloudServicer(lambda: app.cloud), server)
    gateway_pb2_grpc.add_VmaGatewayServiceServicer_to_server(GatewayServicer(app.hub), server)
    access_pb2_grpc.add_AccessServiceServicer_to_server(AccessServicer(app.tokens, app.audit), server)
    schedule_pb2_grpc.add_ScheduleServiceServicer_to_server(ScheduleServicer(app.schedules), server)
    bandwidth_pb2_grpc.add_BandwidthServiceServicer_to_server(BandwidthServicer(app.bandwidth), server)
    groups = MachineGroupServicer(app.groups, app.group_runs)
    machine_group_pb2_grpc.add_MachineGroupServiceServicer_to_server(groups, server)


def _http_server(app: App) -> HttpServer:
    """The dashboard and /metrics, given what they read."""
    auth = HttpAuth(
        app.tokens,
        secure_cookie=app.settings.http_tls_cert is not None,
        reauth_interval_s=app.settings.http_reauth_interval_s,
    )
    dashboard = Dashboard(
        appliances=app.appliances,
        vms=app.vms,
        joblog=app.joblog,
        job_watch=app.job_watch,
        info=app.info,
        auth=auth,
        rpo=RpoReader(app.db, app.clock),
    )
    return HttpServer(app.settings, dashboard, Scraper(app.db, app.jobs, app.hub, app.watch, app.nbd, app.clock), auth)


def _server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(tls.credentials.key_pem, tls.credentials.chain_pem)])


def _appliance_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Mutual TLS: a client certificate of the OMA's CA is required (grpc cannot ask for an optional one, hence a
    port of its own); which appliance it names, and whether it was revoked, the gateway checks at the hello."""
    return grpc.ssl_server_credentials(
        [(tls.credentials.key_pem, tls.credentials.chain_pem)], root_certificates=tls.ca_pem, require_client_auth=True
    )


def _log_transport(listen: str, tls: ServerTls | None) -> None:
    if tls is None:
        logger.warning(
            "--insecure: the gRPC port {listen} serves PLAINTEXT: whoever reaches it reads and changes everything; "
            "use it on a trusted loopback only",
            listen=listen,
        )
        return
    if tls.ca_path is not None:
        logger.info(
            "TLS on {listen} for {names}; clients verify it with the OMA's CA {ca} ({fp})",
            listen=listen,
            names=", ".join(tls.names),
            ca=tls.ca_path,
            fp=tls.ca_fingerprint,
        )
    else:
        logger.info("TLS on {listen} with --tls-cert for {names}", listen=listen, names=", ".join(tls.names))


def _announce_initial_token(path: Path, omactl_config: Path) -> None:
    """The first start made an admin token: its secret goes to a terminal once (never into a log, which outlives
    the moment and is read by others), its place into the log."""
    logger.warning(
        "first start: made the initial admin API token in {path} (0600) and an omactl config naming it, "
        "{config} (OMA_CONFIG={config} omactl ...); make others with oma-server create-token or omactl tokens "
        "create --omactl-config FILE, then revoke it (omactl tokens revoke)",
        path=path,
        config=omactl_config,
    )
    if sys.stdout.isatty():
        print(f"Initial admin API token (shown once; also in {path}):\n{path.read_text().strip()}", flush=True)


class OmaServer:
    """A running OMA: the App plus its gRPC server, health and reflection."""

    def __init__(self, app: App) -> None:
        self.app = app
        settings = app.settings
        self.server = grpc.aio.server(
            options=server_options(settings.max_message_bytes),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            # Access first: a call without the right token reaches neither the request checks nor its handler.
            # Retries by request_id last: they are answered only to an allowed caller, for a request that checked out.
            interceptors=[
                AccessInterceptor(app.tokens, app.audit),
                ErrorMappingInterceptor(),
                IdempotencyInterceptor(
                    IdempotencyStore(app.db, app.clock, timedelta(seconds=settings.idempotency_ttl_s))
                ),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        _register_servicers(self.server, app)
        # Reflection serves the descriptors with their comments, so `grpcurl describe` shows the SDK documentation.
        reflection.enable_server_reflection(
            [*SERVICE_NAMES, *REFLECTION_ONLY, reflection.SERVICE_NAME, health.SERVICE_NAME],
            self.server,
            pool=SourceInfoPool(),  # type: ignore[arg-type]
        )
        self.port = 0
        #: the appliance port (mutual TLS; 0 with --insecure)
        self.appliance_port = 0
        #: what the gRPC port presents (None with --insecure); loaded, or made at first start, in `start()`
        self.tls: ServerTls | None = None
        self._stopping = False
        self.http: HttpServer | None = _http_server(app) if app.settings.http_listen else None
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Bind the port (a busy one fails before anything else starts), start the App, then serve.

        On failure or cancellation the caller still calls `stop()`, which stops whatever had started.
        """
        settings = self.app.settings
        try:
            if settings.insecure:
                self.port = self.server.add_insecure_port(settings.listen)
            else:
                assert self.app.ca is not None  # made by the App unless --insecure
                self.tls = ServerTls.load(settings, self.app.ca)
                self.port = self.server.add_secure_port(settings.listen, _server_credentials(self.tls))
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.listen}: address in use or not available")
        _log_transport(settings.listen, self.tls)
        if self.app.ca is not None:
            self._listen_for_appliances(self.app.ca)
        await self.app.start()
        if self.app.initial_admin_token is not None:
            _announce_initial_token(
                self.app.initial_admin_token, self._write_omactl_config(self.app.initial_admin_token)
            )
        await self.server.start()
        if self.http is not None:
            await self.http.start()
        await self._set_serving(health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "oma-server {version} serving on {listen} (port {port})",
            version=__version__,
            listen=self.app.settings.listen,
            port=self.port,
        )
        return self.port

    def _write_omactl_config(self, admin_token: Path) -> Path:
        """At the first start, `<data dir>/omactl.toml`: omactl on this host reaches this OMA with the initial
        admin token (the file names the token's file, it does not copy it)."""
        settings = self.app.settings
        path = settings.data_dir / OMACTL_CONFIG_FILE
        server = dial_endpoint(settings.listen, settings.advertise_addresses, self.port)
        ca = self.tls.ca_path if self.tls is not None else None
        omactl_config.write(path, server=server, ca=ca, token_file=admin_token, insecure=settings.insecure)
        return path

    def _listen_for_appliances(self, ca: CertificateAuthority) -> None:
        settings = self.app.settings
        appliance_tls = ServerTls.for_appliances(settings, ca)
        try:
            self.appliance_port = self.server.add_secure_port(
                settings.appliance_listen, _appliance_credentials(appliance_tls)
            )
        except RuntimeError:
            self.appliance_port = 0
        if self.appliance_port == 0:
            raise OSError(f"cannot listen on {settings.appliance_listen} (--appliance-listen): address in use")
        self.app.appliance_endpoint = appliance_endpoint(settings, self.appliance_port)
        logger.info(
            "appliances dial {endpoint} with mutual TLS (client certificates of the OMA's CA {fp}){legacy}",
            endpoint=self.app.appliance_endpoint,
            fp=ca.fingerprint,
            legacy="; credential hellos are allowed too (--allow-credential-hello, deprecated)"
            if settings.allow_credential_hello
            else "",
        )

    def local_endpoint(self) -> Endpoint:
        """How a client on this host reaches this server (tests, benchmarks): loopback, verified against its CA,
        with the initial admin token of its data dir."""
        target = f"127.0.0.1:{self.port}"
        token = read_admin_token(self.app.settings.data_dir)
        if self.tls is None:
            return Endpoint(target, insecure=True, token=token)
        return Endpoint(target, self.tls.ca_pem, token=token)

    async def _set_serving(self, status: int) -> None:
        await self.health.set("", status)
        for name in SERVICE_NAMES:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, streams told to drain, the server stopped with a grace period, then the App.

        Safe after a start that failed or was cancelled part-way; a second call waits for the first.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.app.settings.shutdown_grace_s if grace is None else grace
        logger.info("shutting down: health NOT_SERVING, draining streams, grace {grace}s", grace=grace)
        try:
            await self._set_serving(health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.health.enter_graceful_shutdown()
            if self.http is not None:
                await self.http.stop()
            await self.app.begin_shutdown()
            await self.server.stop(grace)
        finally:
            await self.app.stop()
            self._stopped.set()
        logger.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(app: App, signals: StopSignals) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    A signal during start-up cancels it (the parts that own processes or ports finish their own start first, see
    `App.start`) and stops whatever had started; a signal during shutdown changes nothing. Either way the process
    ends normally with nothing of its own left running.
    """
    stop_requested = signals.requested()
    oma = OmaServer(app)
    logger.info("oma-server {version} starting (pid {pid})", version=__version__, pid=os.getpid())
    try:
        if not await _start_unless_stopped(oma, stop_requested):
            logger.info("stop requested during start-up; stopping what had started")
            return
        # Everything built at start lives for the whole process: keep it out of the cyclic collector's full passes,
        # and collect the young generation less often (thousands of short-lived messages a second).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        await stop_requested.wait()
    finally:
        await oma.stop()


async def _start_unless_stopped(oma: OmaServer, stop_requested: asyncio.Event) -> bool:
    """Start the server; False (start-up cancelled) if a stop is requested first. Start-up errors propagate."""
    start = asyncio.create_task(oma.start(), name="oma-start")
    stop = asyncio.create_task(stop_requested.wait(), name="oma-stop-requested")
    try:
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if start.done():
        start.result()
        return True
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start
    return False
