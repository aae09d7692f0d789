"""VmContextService servicer."""

from __future__ import annotations

import grpc

from oma.v1 import vm_context_pb2, vm_context_pb2_grpc
from oma_server.api.convert import enum_name, failover_job_to_proto, vm_context_to_proto
from oma_server.api.schedules import with_rpo
from oma_server.app import App
from oma_server.errors import Unavailable
from oma_server.failover.power import SourcePower
from oma_server.wire.stream_codec import decode_vm, encode_vm


def _power(app: App) -> SourcePower:
    if app.power is None:
        raise Unavailable("the failover service is starting; retry in a moment", reason="NOT_READY")
    return app.power


class VmContextServicer(vm_context_pb2_grpc.VmContextServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def RegisterVmContext(
        self, request: vm_context_pb2.RegisterVmContextRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.RegisterVmContextResponse:
        view, created = await self.app.vms.register(request.appliance_id, decode_vm(request.virtual_machine))
        return vm_context_pb2.RegisterVmContextResponse(vm_context=vm_context_to_proto(view), created=created)

    async def DiscoverVms(
        self, request: vm_context_pb2.DiscoverVmsRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.DiscoverVmsResponse:
        await self.app.appliances.get(request.appliance_id)
        found, views = await self.app.vms.discover(
            request.appliance_id,
            request.name_filter,
            request.register,
            float(request.timeout_seconds or 30),
            self.app.hub.connected(request.appliance_id),
        )
        return vm_context_pb2.DiscoverVmsResponse(
            virtual_machines=[encode_vm(vm) for vm in found], vm_contexts=[vm_context_to_proto(v) for v in views]
        )

    async def GetVmContext(
        self, request: vm_context_pb2.GetVmContextRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.GetVmContextResponse:
        vm = vm_context_to_proto(await self.app.vms.get(request.id))
        return vm_context_pb2.GetVmContextResponse(vm_context=(await with_rpo(self.app, [vm]))[0])

    async def ListVmContexts(
        self, request: vm_context_pb2.ListVmContextsRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.ListVmContextsResponse:
        status = enum_name(vm_context_pb2.VmContextStatus, "VM_CONTEXT_STATUS", request.status)
        page = await self.app.vms.list_vms(request.page_size, request.page_token, request.appliance_id, status)
        vms = await with_rpo(self.app, [vm_context_to_proto(v) for v in page.vms])
        return vm_context_pb2.ListVmContextsResponse(vm_contexts=vms, next_page_token=page.next_page_token)

    async def PowerOnSourceVm(
        self, request: vm_context_pb2.PowerOnSourceVmRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.PowerOnSourceVmResponse:
        job = await _power(self.app).power_on(request.vm_context_id, request.request_id)
        return vm_context_pb2.PowerOnSourceVmResponse(job=failover_job_to_proto(job))

    async def DeleteVmContext(
        self, request: vm_context_pb2.DeleteVmContextRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.DeleteVmContextResponse:
        if self.app.deletion is None:
            raise Unavailable("the OMA is starting; retry in a moment", reason="NOT_READY")
        deleted = await self.app.deletion.delete(request.id)
        return vm_context_pb2.DeleteVmContextResponse(
            vm_context_id=deleted.vm_context_id,
            deleted_volume_ids=deleted.volumes_deleted,
            removed_export_names=deleted.exports_removed,
        )

    async def CompleteMigration(
        self, request: vm_context_pb2.CompleteMigrationRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.CompleteMigrationResponse:
        done = await self.app.completion.complete(request.vm_context_id)
        vm = vm_context_to_proto(await self.app.vms.get(done.vm_context_id))
        return vm_context_pb2.CompleteMigrationResponse(
            vm_context=(await with_rpo(self.app, [vm]))[0],
            target_vm_id=done.target_vm_id,
            kept_volume_ids=done.kept_volumes,
            removed_export_names=done.exports_removed,
            release_command_id=done.release_command_id,
        )

    async def PowerOffSourceVm(
        self, request: vm_context_pb2.PowerOffSourceVmRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.PowerOffSourceVmResponse:
        job = await _power(self.app).power_off(request.vm_context_id, request.request_id)
        return vm_context_pb2.PowerOffSourceVmResponse(job=failover_job_to_proto(job))
