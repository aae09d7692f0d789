"""FailoverService and NetworkMappingService servicers (decode, call, encode)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc
from google.protobuf.message import Message

from oma.v1 import failover_pb2, failover_pb2_grpc
from oma_server.api.convert import enum_name, failover_job_to_proto, mapping_to_proto
from oma_server.errors import InvalidArgument, Unavailable
from oma_server.failover.cutover import CutoverTiming, DeadlineAction
from oma_server.failover.network_mappings import MappingInput, MappingUpdate, NetworkMappingService
from oma_server.failover.state_machine import FailoverKind
from oma_server.failover.store import FailoverJobStore
from oma_server.failover.workflow import FailoverWorkflow
from oma_server.jobs import Jobs
from oma_server.vm_contexts.service import VmContextService


def _kind(value: int) -> FailoverKind:
    name = enum_name(failover_pb2.FailoverJobKind, "FAILOVER_JOB_KIND", value)
    if name not in (FailoverKind.TEST.value, FailoverKind.LIVE.value):
        raise InvalidArgument(
            "kind must be FAILOVER_JOB_KIND_TEST or FAILOVER_JOB_KIND_LIVE", reason="FAILOVER_KIND_INVALID"
        )
    return FailoverKind(name)


_MIN_SECONDS = -62135596800  # 0001-01-01T00:00:00Z, the Timestamp range (AIP-142)
_MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z


def _time(request: Message, name: str) -> datetime | None:
    """An optional Timestamp field as naive UTC (None when unset); INVALID_ARGUMENT naming it when out of range."""
    if not request.HasField(name):
        return None
    value = getattr(request, name)
    if not _MIN_SECONDS <= value.seconds <= _MAX_SECONDS or not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument(f"{name} is not a valid timestamp", reason="TIMESTAMP_INVALID", field=name)
    return value.ToDatetime()  # type: ignore[no-any-return]


def _timing(request: failover_pb2.StartFailoverRequest) -> CutoverTiming:
    action = enum_name(failover_pb2.DeadlineMissedAction, "DEADLINE_MISSED_ACTION", request.on_deadline_missed)
    return CutoverTiming(
        start_at=_time(request, "start_at"),
        final_sync_deadline=_time(request, "final_sync_deadline"),
        on_deadline_missed=DeadlineAction(action) if action else None,
    )


def _workflow(failover: Callable[[], FailoverWorkflow | None]) -> FailoverWorkflow:
    workflow = failover()
    if workflow is None:
        raise Unavailable("the failover service is starting; retry in a moment", reason="NOT_READY")
    return workflow


def _mappings(network_mappings: Callable[[], NetworkMappingService | None]) -> NetworkMappingService:
    mappings = network_mappings()
    if mappings is None:
        raise Unavailable("the network mapping service is starting; retry in a moment", reason="NOT_READY")
    return mappings


class FailoverServicer(failover_pb2_grpc.FailoverServiceServicer):
    def __init__(
        self,
        failover: Callable[[], FailoverWorkflow | None],
        failover_jobs: FailoverJobStore,
        all_jobs: Jobs,
        vms: VmContextService,
    ) -> None:
        """`failover` gives the workflow once the App built it (at start, with the CloudStack client)."""
        self.failover = failover
        self.failover_jobs = failover_jobs
        self.all_jobs = all_jobs
        self.vms = vms

    async def CheckFailoverReadiness(
        self, request: failover_pb2.CheckFailoverReadinessRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.CheckFailoverReadinessResponse:
        readiness = await _workflow(self.failover).check(request.vm_context_id, _kind(request.kind))
        return failover_pb2.CheckFailoverReadinessResponse(
            checks=[
                failover_pb2.ReadinessCheck(name=c.name, passed=c.passed, reason=c.reason) for c in readiness.checks
            ],
            ready=readiness.ready,
        )

    async def StartFailover(
        self, request: failover_pb2.StartFailoverRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.StartFailoverResponse:
        kind, timing = _kind(request.kind), _timing(request)
        job = await _workflow(self.failover).start_failover(
            request.vm_context_id, kind, request.service_offering_id, request.request_id, timing
        )
        return failover_pb2.StartFailoverResponse(job=failover_job_to_proto(job))

    async def CleanupFailover(
        self, request: failover_pb2.CleanupFailoverRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.CleanupFailoverResponse:
        job = await _workflow(self.failover).cleanup(request.vm_context_id)
        return failover_pb2.CleanupFailoverResponse(job=failover_job_to_proto(job))

    async def RollbackFailover(
        self, request: failover_pb2.RollbackFailoverRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.RollbackFailoverResponse:
        job = await _workflow(self.failover).rollback(request.vm_context_id, request.power_on_source)
        return failover_pb2.RollbackFailoverResponse(job=failover_job_to_proto(job))

    async def GetFailoverJob(
        self, request: failover_pb2.GetFailoverJobRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.GetFailoverJobResponse:
        job = await self.all_jobs.failover_job(request.id)
        return failover_pb2.GetFailoverJobResponse(job=failover_job_to_proto(job))

    async def ListFailoverJobs(
        self, request: failover_pb2.ListFailoverJobsRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.ListFailoverJobsResponse:
        await self.vms.require(request.vm_context_id)
        page = await self.failover_jobs.list_jobs(request.page_size, request.page_token, request.vm_context_id)
        return failover_pb2.ListFailoverJobsResponse(
            jobs=[failover_job_to_proto(j) for j in page.jobs], next_page_token=page.next_page_token
        )


class NetworkMappingServicer(failover_pb2_grpc.NetworkMappingServiceServicer):
    def __init__(self, network_mappings: Callable[[], NetworkMappingService | None]) -> None:
        self.network_mappings = network_mappings

    async def CreateNetworkMapping(
        self, request: failover_pb2.CreateNetworkMappingRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.CreateNetworkMappingResponse:
        m = request.mapping
        row = await _mappings(self.network_mappings).create(
            MappingInput(m.vm_context_id, m.source_network, m.target_network_id, m.static_ip, m.keep_mac)
        )
        return failover_pb2.CreateNetworkMappingResponse(mapping=mapping_to_proto(row))

    async def ListNetworkMappings(
        self, request: failover_pb2.ListNetworkMappingsRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.ListNetworkMappingsResponse:
        rows, next_page_token = await _mappings(self.network_mappings).list(
            request.vm_context_id, request.page_size, request.page_token
        )
        return failover_pb2.ListNetworkMappingsResponse(
            mappings=[mapping_to_proto(r) for r in rows], next_page_token=next_page_token
        )

    async def UpdateNetworkMapping(
        self, request: failover_pb2.UpdateNetworkMappingRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.UpdateNetworkMappingResponse:
        m = request.mapping
        change = MappingUpdate(
            m.id,
            m.vm_context_id,
            m.source_network,
            m.target_network_id,
            m.static_ip,
            m.keep_mac,
            tuple(request.update_mask.paths),
        )
        row = await _mappings(self.network_mappings).update(change)
        return failover_pb2.UpdateNetworkMappingResponse(mapping=mapping_to_proto(row))

    async def DeleteNetworkMapping(
        self, request: failover_pb2.DeleteNetworkMappingRequest, context: grpc.aio.ServicerContext
    ) -> failover_pb2.DeleteNetworkMappingResponse:
        await _mappings(self.network_mappings).delete(request.id)
        return failover_pb2.DeleteNetworkMappingResponse()
