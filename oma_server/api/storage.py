"""VolumeService and NbdExportService servicers."""

from __future__ import annotations

import grpc

from oma.v1 import storage_pb2, storage_pb2_grpc
from oma_server.api.convert import enum_name, export_to_proto, volume_to_proto
from oma_server.storage.exports import ExportService
from oma_server.storage.queries import VolumeQueries
from oma_server.vm_contexts.service import VmContextService


class VolumeServicer(storage_pb2_grpc.VolumeServiceServicer):
    def __init__(self, volume_queries: VolumeQueries, vms: VmContextService) -> None:
        self.volume_queries = volume_queries
        self.vms = vms

    async def GetVolume(
        self, request: storage_pb2.GetVolumeRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.GetVolumeResponse:
        return storage_pb2.GetVolumeResponse(volume=volume_to_proto(await self.volume_queries.get(request.id)))

    async def ListVolumes(
        self, request: storage_pb2.ListVolumesRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListVolumesResponse:
        state = enum_name(storage_pb2.VolumeState, "VOLUME_STATE", request.state)
        await self.vms.require(request.vm_context_id)
        page = await self.volume_queries.list_volumes(
            request.page_size, request.page_token, request.vm_context_id, state
        )
        return storage_pb2.ListVolumesResponse(
            volumes=[volume_to_proto(v) for v in page.volumes], next_page_token=page.next_page_token
        )


class NbdExportServicer(storage_pb2_grpc.NbdExportServiceServicer):
    def __init__(self, exports: ExportService) -> None:
        self.exports = exports

    async def GetNbdExport(
        self, request: storage_pb2.GetNbdExportRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.GetNbdExportResponse:
        return storage_pb2.GetNbdExportResponse(nbd_export=export_to_proto(await self.exports.get(request.name)))

    async def ListNbdExports(
        self, request: storage_pb2.ListNbdExportsRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListNbdExportsResponse:
        state = enum_name(storage_pb2.NbdExportState, "NBD_EXPORT_STATE", request.state)
        page = await self.exports.list_exports(request.page_size, request.page_token, state)
        return storage_pb2.ListNbdExportsResponse(
            nbd_exports=[export_to_proto(e) for e in page.exports], next_page_token=page.next_page_token
        )
