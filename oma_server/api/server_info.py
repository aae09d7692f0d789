"""ServerInfoService: version and configuration summary."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from oma.v1 import server_info_pb2, server_info_pb2_grpc
from oma_server.api.convert import ts
from oma_server.info import ServerInfo


class ServerInfoServicer(server_info_pb2_grpc.ServerInfoServiceServicer):
    def __init__(self, info: Callable[[], ServerInfo]) -> None:
        self.info = info

    async def GetServerInfo(
        self, request: server_info_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> server_info_pb2.GetServerInfoResponse:
        info = self.info()
        return server_info_pb2.GetServerInfoResponse(
            version=info.version,
            database_kind=info.database_kind,
            cloudstack_kind=info.cloudstack_kind,
            started_at=ts(info.started_at),
            schema_version=info.schema_version,
            process_id=info.process_id,
        )
