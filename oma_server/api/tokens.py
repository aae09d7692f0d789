"""AccessService: operators' API tokens (admin only; see access.METHOD_ACCESS)."""

from __future__ import annotations

from datetime import timedelta

import grpc

from oma.v1 import access_pb2, access_pb2_grpc
from oma_server.api.convert import ts
from oma_server.db.models import ApiToken
from oma_server.errors import InvalidArgument
from oma_server.security.tokens import Role, TokenService


def api_token_to_proto(row: ApiToken) -> access_pb2.ApiToken:
    return access_pb2.ApiToken(
        id=row.id,
        name=row.name,
        role=int(Role.parse(row.role)),  # type: ignore[arg-type]
        created_at=ts(row.created_at),
        expires_at=ts(row.expires_at),
        revoked_at=ts(row.revoked_at),
    )


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    async def CreateApiToken(
        self, request: access_pb2.CreateApiTokenRequest, context: grpc.aio.ServicerContext
    ) -> access_pb2.CreateApiTokenResponse:
        if request.role == access_pb2.ROLE_UNSPECIFIED:
            raise InvalidArgument("role is required: viewer, operator or admin", reason="ROLE_REQUIRED", field="role")
        ttl = timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None
        issued = await self.tokens.create(request.name, Role(request.role), ttl)
        return access_pb2.CreateApiTokenResponse(token=api_token_to_proto(issued.token), secret=issued.secret)

    async def ListApiTokens(
        self, request: access_pb2.ListApiTokensRequest, context: grpc.aio.ServicerContext
    ) -> access_pb2.ListApiTokensResponse:
        return access_pb2.ListApiTokensResponse(tokens=[api_token_to_proto(t) for t in await self.tokens.list()])

    async def RevokeApiToken(
        self, request: access_pb2.RevokeApiTokenRequest, context: grpc.aio.ServicerContext
    ) -> access_pb2.RevokeApiTokenResponse:
        return access_pb2.RevokeApiTokenResponse(token=api_token_to_proto(await self.tokens.revoke(request.id)))
