"""ApplianceService: enrollment and inspection of VMAs."""

from __future__ import annotations

import grpc

from oma.v1 import appliance_pb2, appliance_pb2_grpc
from oma_server.api.convert import appliance_to_proto, enum_name, ts
from oma_server.appliances import ApplianceService


class ApplianceServicer(appliance_pb2_grpc.ApplianceServiceServicer):
    def __init__(self, appliances: ApplianceService, ca_fingerprint: str) -> None:
        self.appliances = appliances
        self.ca_fingerprint = ca_fingerprint

    async def EnrollAppliance(
        self, request: appliance_pb2.EnrollApplianceRequest, context: grpc.aio.ServicerContext
    ) -> appliance_pb2.EnrollApplianceResponse:
        enrollment = await self.appliances.enroll(request.name)
        return appliance_pb2.EnrollApplianceResponse(
            appliance=appliance_to_proto(enrollment.appliance),
            credential=enrollment.credential,
            join_token=enrollment.join_token,
            join_token_expires_at=ts(enrollment.join_token_expires_at),
            ca_fingerprint=self.ca_fingerprint if enrollment.join_token else "",
        )

    async def GetAppliance(
        self, request: appliance_pb2.GetApplianceRequest, context: grpc.aio.ServicerContext
    ) -> appliance_pb2.GetApplianceResponse:
        return appliance_pb2.GetApplianceResponse(appliance=appliance_to_proto(await self.appliances.get(request.id)))

    async def ListAppliances(
        self, request: appliance_pb2.ListAppliancesRequest, context: grpc.aio.ServicerContext
    ) -> appliance_pb2.ListAppliancesResponse:
        state = enum_name(appliance_pb2.ConnectionState, "CONNECTION_STATE", request.connection_state)
        page = await self.appliances.list(request.page_size, request.page_token, state or None)
        return appliance_pb2.ListAppliancesResponse(
            appliances=[appliance_to_proto(a) for a in page.appliances], next_page_token=page.next_page_token
        )

    async def RevokeAppliance(
        self, request: appliance_pb2.RevokeApplianceRequest, context: grpc.aio.ServicerContext
    ) -> appliance_pb2.RevokeApplianceResponse:
        appliance = await self.appliances.revoke(request.id)
        return appliance_pb2.RevokeApplianceResponse(appliance=appliance_to_proto(appliance))
