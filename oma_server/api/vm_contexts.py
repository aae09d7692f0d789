"""VmContextService servicer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from oma.v1 import vm_context_pb2, vm_context_pb2_grpc
from oma_server.api.convert import enum_name, failover_job_to_proto, vm_context_to_proto
from oma_server.api.schedules import RpoReader, with_rpo
from oma_server.appliances import ApplianceService
from oma_server.errors import Unavailable
from oma_server.failover.at_rest import RestVerification
from oma_server.failover.power import SourcePower
from oma_server.lifecycle.completion import MigrationCompletion
from oma_server.lifecycle.deletion import VmDeletion
from oma_server.vm_contexts.service import VmContextService
from oma_server.wire.stream_codec import decode_vm, encode_vm


@dataclass(frozen=True)
class VmLifecycle:
    """Deleting a VM context and verifying its replicas at rest (built at start: they need CloudStack; None until
    then), and completing a migration."""

    deletion: Callable[[], VmDeletion | None]
    completion: MigrationCompletion
    verification: Callable[[], RestVerification | None]


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
        connected: Callable[[str], Awaitable[bool]],
        power: Callable[[], SourcePower | None],
        lifecycle: VmLifecycle,
        rpo: RpoReader,
    ) -> None:
        """`connected(appliance_id)` says whether its stream is up; `power` gives SourcePower once it is built."""
        self.vms = vms
        self.appliances = appliances
        self.connected = connected
        self.power = power
        self.lifecycle = lifecycle
        self.rpo = rpo

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
            await self.connected(request.appliance_id),
        )
        return vm_context_pb2.DiscoverVmsResponse(
            virtual_machines=[encode_vm(vm) for vm in found], vm_contexts=[vm_context_to_proto(v) for v in views]
        )

    async def GetVmContext(
        self, request: vm_context_pb2.GetVmContextRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.GetVmContextResponse:
        vm = vm_context_to_proto(await self.vms.get(request.id))
        return vm_context_pb2.GetVmContextResponse(vm_context=(await with_rpo(self.rpo, [vm]))[0])

    async def ListVmContexts(
        self, request: vm_context_pb2.ListVmContextsRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.ListVmContextsResponse:
        status = enum_name(vm_context_pb2.VmContextStatus, "VM_CONTEXT_STATUS", request.status)
        page = await self.vms.list_vms(request.page_size, request.page_token, request.appliance_id, status)
        vms = await with_rpo(self.rpo, [vm_context_to_proto(v) for v in page.vms])
        return vm_context_pb2.ListVmContextsResponse(vm_contexts=vms, next_page_token=page.next_page_token)

    async def PowerOnSourceVm(
        self, request: vm_context_pb2.PowerOnSourceVmRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.PowerOnSourceVmResponse:
        job = await _power(self.power).power_on(request.vm_context_id, request.request_id)
        return vm_context_pb2.PowerOnSourceVmResponse(job=failover_job_to_proto(job))

    async def DeleteVmContext(
        self, request: vm_context_pb2.DeleteVmContextRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.DeleteVmContextResponse:
        deletion = self.lifecycle.deletion()
        if deletion is None:
            raise Unavailable("the OMA is starting; retry in a moment", reason="NOT_READY")
        deleted = await deletion.delete(request.id)
        return vm_context_pb2.DeleteVmContextResponse(
            vm_context_id=deleted.vm_context_id,
            deleted_volume_ids=deleted.volumes_deleted,
            removed_export_names=deleted.exports_removed,
        )

    async def CompleteMigration(
        self, request: vm_context_pb2.CompleteMigrationRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.CompleteMigrationResponse:
        done = await self.lifecycle.completion.complete(request.vm_context_id)
        vm = vm_context_to_proto(await self.vms.get(done.vm_context_id))
        return vm_context_pb2.CompleteMigrationResponse(
            vm_context=(await with_rpo(self.rpo, [vm]))[0],
            target_vm_id=done.target_vm_id,
            kept_volume_ids=done.kept_volumes,
            removed_export_names=done.exports_removed,
            release_command_id=done.release_command_id,
        )

    async def PowerOffSourceVm(
        self, request: vm_context_pb2.PowerOffSourceVmRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.PowerOffSourceVmResponse:
        job = await _power(self.power).power_off(request.vm_context_id, request.request_id)
        return vm_context_pb2.PowerOffSourceVmResponse(job=failover_job_to_proto(job))

    async def VerifyVmContext(
        self, request: vm_context_pb2.VerifyVmContextRequest, context: grpc.aio.ServicerContext
    ) -> vm_context_pb2.VerifyVmContextResponse:
        verification = self.lifecycle.verification()
        if verification is None:
            raise Unavailable("the OMA is starting; retry in a moment", reason="NOT_READY")
        job = await verification.start(request.vm_context_id, request.request_id)
        return vm_context_pb2.VerifyVmContextResponse(job=failover_job_to_proto(job))
