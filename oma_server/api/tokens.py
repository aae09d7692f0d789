"""AccessService: operators' API tokens and the audit log (admin only; see access.METHOD_ACCESS)."""

from __future__ import annotations

from datetime import timedelta

import grpc

from oma.v1 import access_pb2, access_pb2_grpc
from oma_server.api.convert import ts
from oma_server.db.models import ApiToken, AuditEntry
from oma_server.errors import InvalidArgument
from oma_server.security.audit import AuditFilter, AuditLog
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


def audit_entry_to_proto(row: AuditEntry) -> access_pb2.AuditEntry:
    return access_pb2.AuditEntry(
        id=row.id,
        at=ts(row.at),
        actor=row.actor,
        token_id=row.token_id,
        method=row.method,
        resource=row.resource,
        peer=row.peer,
        outcome=row.outcome,
        reason=row.reason,
        finished_at=ts(row.finished_at),
    )


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, tokens: TokenService, audit: AuditLog) -> None:
        self.tokens = tokens
        self.audit = audit

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
        tokens, next_page_token = await self.tokens.list(request.page_size, request.page_token)
        return access_pb2.ListApiTokensResponse(
            tokens=[api_token_to_proto(t) for t in tokens], next_page_token=next_page_token
        )

    async def RevokeApiToken(
        self, request: access_pb2.RevokeApiTokenRequest, context: grpc.aio.ServicerContext
    ) -> access_pb2.RevokeApiTokenResponse:
        return access_pb2.RevokeApiTokenResponse(token=api_token_to_proto(await self.tokens.revoke(request.id)))

    async def ListAuditEntries(
        self, request: access_pb2.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> access_pb2.ListAuditEntriesResponse:
        where = AuditFilter(token_id=request.token_id, method=request.method, resource=request.resource)
        entries, token = await self.audit.list(request.page_size, request.page_token, where)
        return access_pb2.ListAuditEntriesResponse(
            entries=[audit_entry_to_proto(e) for e in entries], next_page_token=token
        )
