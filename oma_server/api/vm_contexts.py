"""VmContextService servicer."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from oma.v1 import vm_context_pb2, vm_context_pb2_grpc
from oma_server.api.convert import enum_name, failover_job_to_proto, vm_context_to_proto
from oma_server.appliances import ApplianceService
from oma_server.errors import Unavailable
from oma_server.failover.power import SourcePower
from oma_server.vm_contexts.service import VmContextService
from oma_server.wire.stream_codec import decode_vm, encode_vm


def _power(power: Callable[[], SourcePower | None]) -> SourcePower:
    started = power()
    if started is None:
        raise Unavailable("the failover service is starting; retry in a moment", reason="NOT_READY")
    return started


class VmContextServicer(vm_context_pb2_grpc.VmContextServiceServicer):
    def __init__(
        self,
        vms: VmContextService,
        appliances: ApplianceService,
        connected: Callable[[str], bool],
        power: Callable[[], SourcePower | None],
    ) -> None:
        """`connected(appliance_id)` says whether its stream is up; `power` gives SourcePower once it is built."""
        self.vms = vms
        self.appliances = appliances
        self.connected = connected
        self.power = power

    async def RegisterVmContext(
        self, request: vm_context_pb2.RegisterVmContextRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.RegisterVmContextResponse:
        view, created = await self.vms.register(request.appliance_id, decode_vm(request.virtual_machine))
        return vm_context_pb2.RegisterVmContextResponse(vm_context=vm_context_to_proto(view), created=created)

    async def DiscoverVms(
        self, request: vm_context_pb2.DiscoverVmsRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.DiscoverVmsResponse:
        await self.appliances.get(request.appliance_id)
        found, views = await self.vms.discover(
            request.appliance_id,
            request.name_filter,
            request.register,
            float(request.timeout_seconds or 30),
            self.connected(request.appliance_id),
        )
        return vm_context_pb2.DiscoverVmsResponse(
            virtual_machines=[encode_vm(vm) for vm in found], vm_contexts=[vm_context_to_proto(v) for v in views]
        )

    async def GetVmContext(
        self, request: vm_context_pb2.GetVmContextRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.GetVmContextResponse:
        return vm_context_pb2.GetVmContextResponse(vm_context=vm_context_to_proto(await self.vms.get(request.id)))

    async def ListVmContexts(
        self, request: vm_context_pb2.ListVmContextsRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.ListVmContextsResponse:
        status = enum_name(vm_context_pb2.VmContextStatus, "VM_CONTEXT_STATUS", request.status)
        page = await self.vms.list_vms(request.page_size, request.page_token, request.appliance_id, status)
        return vm_context_pb2.ListVmContextsResponse(
            vm_contexts=[vm_context_to_proto(v) for v in page.vms], next_page_token=page.next_page_token
        )

    async def PowerOnSourceVm(
        self, request: vm_context_pb2.PowerOnSourceVmRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.PowerOnSourceVmResponse:
        job = await _power(self.power).power_on(request.vm_context_id, request.request_id)
        return vm_context_pb2.PowerOnSourceVmResponse(job=failover_job_to_proto(job))

    async def PowerOffSourceVm(
        self, request: vm_context_pb2.PowerOffSourceVmRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.PowerOffSourceVmResponse:
        job = await _power(self.power).power_off(request.vm_context_id, request.request_id)
        return vm_context_pb2.PowerOffSourceVmResponse(job=failover_job_to_proto(job))
