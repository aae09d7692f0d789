"""ApplianceIdentityService: an appliance's join (join token + CSR → client certificate), its renewals and the
confirmation that retires a renewed certificate's predecessor."""

from __future__ import annotations

import grpc

from oma.v1 import appliance_identity_pb2, appliance_identity_pb2_grpc
from oma_server.api.convert import appliance_to_proto, ts
from oma_server.security.appliance_identity import ApplianceCertificates


def peer_certificate(context: grpc.aio.ServicerContext) -> bytes | None:
    """The client certificate (PEM) the TLS handshake verified, None when the peer presented none."""
    pems = context.auth_context().get("x509_pem_cert") or []
    return next(iter(pems), None)


class ApplianceIdentityServicer(appliance_identity_pb2_grpc.ApplianceIdentityServiceServicer):
    def __init__(self, certificates: ApplianceCertificates) -> None:
        self.certificates = certificates

    async def JoinAppliance(
        self, request: appliance_identity_pb2.JoinApplianceRequest, context: grpc.aio.ServicerContext
    ) -> appliance_identity_pb2.JoinApplianceResponse:
        issued = await self.certificates.join(request.join_token, request.csr_pem)
        ca = self.certificates.ca
        return appliance_identity_pb2.JoinApplianceResponse(
            appliance=appliance_to_proto(issued.appliance),
            certificate_pem=issued.certificate_pem,
            ca_pem=ca.pem.decode() if ca is not None else "",
            expires_at=ts(issued.expires_at),
            appliance_endpoint=self.certificates.endpoint(),
        )

    async def RenewApplianceCertificate(
        self, request: appliance_identity_pb2.RenewApplianceCertificateRequest, context: grpc.aio.ServicerContext
    ) -> appliance_identity_pb2.RenewApplianceCertificateResponse:
        issued = await self.certificates.renew(peer_certificate(context), request.csr_pem)
        return appliance_identity_pb2.RenewApplianceCertificateResponse(
            certificate_pem=issued.certificate_pem, expires_at=ts(issued.expires_at)
        )

    async def ConfirmApplianceCertificate(
        self, request: appliance_identity_pb2.ConfirmApplianceCertificateRequest, context: grpc.aio.ServicerContext
    ) -> appliance_identity_pb2.ConfirmApplianceCertificateResponse:
        serial, superseded = await self.certificates.confirm(peer_certificate(context))
        return appliance_identity_pb2.ConfirmApplianceCertificateResponse(serial=serial, superseded_serials=superseded)
