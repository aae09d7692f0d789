"""Who may call what: the one interceptor that authenticates operators and checks every RPC against one table of
method → access (deny by default).

Operators send an API token (`authorization: Bearer oma_...`); its role must reach the method's: `viewer` reads
and watches, `operator` runs replication, failover and network maps, `admin` manages appliances and tokens. Health
and reflection need nothing (load balancers, `grpcurl list`). Appliances need no token: the stream and a renewal
prove themselves by the client certificate of the appliance port (or the deprecated hello credential), a join by
its one-time join token; their services check those. A served method missing from
`METHOD_ACCESS` is refused for everyone, and `tests/test_access.py` fails for it. Refusals are UNAUTHENTICATED (no,
a malformed, an unknown, a revoked or an expired token) or PERMISSION_DENIED (a role too low), each with ErrorInfo;
no message ever carries the token.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from typing import Any

import grpc
from cryptography import x509
from google.protobuf.message import Message
from loguru import logger

from oma_server.api.appliance_identity import peer_certificate
from oma_server.api.status import BEFORE_ERROR_STATUS, ended_with, fail, rewrapped
from oma_server.errors import DomainError, PermissionDenied, Unauthenticated
from oma_server.security.audit import OK, RESOURCE_FIELDS, AuditLog, Caller
from oma_server.security.ca import appliance_id_of
from oma_server.security.tokens import Operator, Role, TokenService


class Access(Enum):
    PUBLIC = "public"  # no credential: health and reflection
    APPLIANCE = "appliance"  # appliances: a client certificate or a join token, checked by their services
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_ROLES = {Access.VIEWER: Role.VIEWER, Access.OPERATOR: Role.OPERATOR, Access.ADMIN: Role.ADMIN}

PUBLIC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def _all(access: Access, *methods: str) -> dict[str, Access]:
    return dict.fromkeys(methods, access)


# Every RPC the OMA serves, and who may call it. The one table: a method without an entry is refused.
METHOD_ACCESS: dict[str, Access] = {
    **_all(
        Access.VIEWER,
        "/oma.v1.ServerInfoService/GetServerInfo",
        "/oma.v1.CloudService/ListZones",
        "/oma.v1.CloudService/ListNetworks",
        "/oma.v1.CloudService/ListServiceOfferings",
        "/oma.v1.CloudService/ListDiskOfferings",
        "/oma.v1.CloudService/ListTemplates",
        "/oma.v1.JobService/GetJob",
        "/oma.v1.JobService/ListJobs",
        "/oma.v1.ApplianceService/GetAppliance",
        "/oma.v1.ApplianceService/ListAppliances",
        "/oma.v1.VmContextService/GetVmContext",
        "/oma.v1.VmContextService/ListVmContexts",
        "/oma.v1.ReplicationService/GetReplicationJob",
        "/oma.v1.ReplicationService/ListReplicationJobs",
        "/oma.v1.JobService/WatchJob",
        "/oma.v1.JobService/WatchJobs",
        "/oma.v1.JobService/ListJobLogEntries",
        "/oma.v1.VolumeService/GetVolume",
        "/oma.v1.VolumeService/ListVolumes",
        "/oma.v1.NbdExportService/GetNbdExport",
        "/oma.v1.NbdExportService/ListNbdExports",
        "/oma.v1.FailoverService/CheckFailoverReadiness",
        "/oma.v1.FailoverService/GetFailoverJob",
        "/oma.v1.FailoverService/ListFailoverJobs",
        "/oma.v1.NetworkMappingService/ListNetworkMappings",
        "/oma.v1.ScheduleService/GetSchedule",
        "/oma.v1.ScheduleService/ListSchedules",
        "/oma.v1.BandwidthService/GetBandwidthLimit",
        "/oma.v1.BandwidthService/ListBandwidthLimits",
        "/oma.v1.MachineGroupService/GetMachineGroup",
        "/oma.v1.MachineGroupService/ListMachineGroups",
        "/oma.v1.MachineGroupService/GetGroupRun",
        "/oma.v1.MachineGroupService/ListGroupRuns",
    ),
    **_all(
        Access.OPERATOR,
        "/oma.v1.VmContextService/RegisterVmContext",
        "/oma.v1.VmContextService/DiscoverVms",
        "/oma.v1.VmContextService/PowerOnSourceVm",
        "/oma.v1.VmContextService/PowerOffSourceVm",
        "/oma.v1.VmContextService/VerifyVmContext",
        "/oma.v1.VmContextService/DeleteVmContext",
        "/oma.v1.VmContextService/CompleteMigration",
        "/oma.v1.JobService/CancelJob",
        "/oma.v1.ReplicationService/StartReplication",
        "/oma.v1.ReplicationService/CancelReplicationJob",
        "/oma.v1.ReplicationService/RetryReplicationJob",
        "/oma.v1.FailoverService/StartFailover",
        "/oma.v1.FailoverService/CleanupFailover",
        "/oma.v1.FailoverService/RollbackFailover",
        "/oma.v1.NetworkMappingService/CreateNetworkMapping",
        "/oma.v1.NetworkMappingService/UpdateNetworkMapping",
        "/oma.v1.NetworkMappingService/DeleteNetworkMapping",
        "/oma.v1.ScheduleService/CreateSchedule",
        "/oma.v1.ScheduleService/UpdateSchedule",
        "/oma.v1.ScheduleService/DeleteSchedule",
        "/oma.v1.ScheduleService/PauseSchedule",
        "/oma.v1.ScheduleService/ResumeSchedule",
        "/oma.v1.BandwidthService/SetBandwidthLimit",
        "/oma.v1.BandwidthService/DeleteBandwidthLimit",
        "/oma.v1.MachineGroupService/CreateMachineGroup",
        "/oma.v1.MachineGroupService/UpdateMachineGroup",
        "/oma.v1.MachineGroupService/DeleteMachineGroup",
        "/oma.v1.MachineGroupService/StartGroupFailover",
        "/oma.v1.MachineGroupService/CleanupGroupFailover",
        "/oma.v1.MachineGroupService/CancelGroupRun",
    ),
    **_all(
        Access.ADMIN,
        "/oma.v1.ApplianceService/EnrollAppliance",
        "/oma.v1.ApplianceService/RevokeAppliance",
        "/oma.v1.AccessService/CreateApiToken",
        "/oma.v1.AccessService/ListApiTokens",
        "/oma.v1.AccessService/RevokeApiToken",
        "/oma.v1.AccessService/ListAuditEntries",
    ),
    **_all(
        Access.APPLIANCE,
        "/oma.v1.VmaGatewayService/Connect",
        "/oma.v1.ApplianceIdentityService/JoinAppliance",  # the join token is the authority
        "/oma.v1.ApplianceIdentityService/RenewApplianceCertificate",  # the client certificate is
        "/oma.v1.ApplianceIdentityService/ConfirmApplianceCertificate",
    ),
}


def access_of(method: str) -> Access | None:
    """Who may call `method` (`/package.Service/Method`); None: nobody (it has no entry)."""
    if method.strip("/").split("/", 1)[0] in PUBLIC_SERVICES:
        return Access.PUBLIC
    return METHOD_ACCESS.get(method)


def _bearer(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


# What an operator or an admin may call changes something, but for the reads among them (AIP verbs): each such call
# goes to the audit log. Every one of them is unary (the streams are reads, or the appliance's own).
AUDITED = (Access.OPERATOR, Access.ADMIN)
# What an appliance calls that makes or retires a certificate: recorded too (the actor is its certificate's
# appliance, or the join token it brought), so that a stolen or guessed token's attempts show.
APPLIANCE_AUDITED = (
    "/oma.v1.ApplianceIdentityService/JoinAppliance",
    "/oma.v1.ApplianceIdentityService/RenewApplianceCertificate",
    "/oma.v1.ApplianceIdentityService/ConfirmApplianceCertificate",
)
READ_VERBS = ("Get", "List", "Check", "Watch")


def audited(method: str, access: Access | None) -> bool:
    """Whether calls of `method` go to the audit log: mutating methods, and methods without an access rule."""
    if access is None:
        return True
    return access in AUDITED and not method.rsplit("/", 1)[-1].startswith(READ_VERBS)


def resource_of(request: object) -> str:
    """The id of the resource a request names (`audit.RESOURCE_FIELDS`, first one set); empty when it names none."""
    if not isinstance(request, Message):  # a request that did not decode: the checks refuse it next
        return ""
    fields = request.DESCRIPTOR.fields_by_name
    for name in RESOURCE_FIELDS:
        if name in fields and (value := getattr(request, name)):
            # as the caller sent it, but printable only: the request checks have not run yet (a NUL, which
            # PostgreSQL cannot store, is theirs to refuse)
            return "".join(c for c in str(value) if c.isprintable())[:255]
    return ""


def _caller(operator: Operator, context: grpc.aio.ServicerContext) -> Caller:
    return Caller(operator.actor, operator.token_id, context.peer() or "")


def _appliance_caller(context: grpc.aio.ServicerContext) -> Caller:
    """An appliance as its verified client certificate names it, or the bearer of a join token."""
    pem = peer_certificate(context)
    appliance_id = appliance_id_of(x509.load_pem_x509_certificate(pem)) if pem else ""
    return Caller(f"appliance:{appliance_id}" if appliance_id else "join token", "", context.peer() or "")


def _refused_caller(refusal: DomainError, context: grpc.aio.ServicerContext) -> Caller:
    """A refused caller: its token's id when the refusal named one (revoked, expired, a role too low)."""
    token_id = str(refusal.metadata.get("token_id", ""))
    return Caller(f"token ({token_id})" if token_id else "anonymous", token_id, context.peer() or "")


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Outermost interceptor: a refused call reaches neither the request checks nor its handler; every call of an
    operator or admin method (a refused one too) is written to the audit log."""

    def __init__(self, tokens: TokenService, audit: AuditLog) -> None:
        self.tokens = tokens
        self.audit = audit

    async def authorize(self, method: str, access: Access | None, context: grpc.aio.ServicerContext) -> Operator:
        """The operator the call's token names, if its role reaches `access`; raises otherwise."""
        if access is None:
            raise PermissionDenied(
                f"{method} has no access rule in this OMA, so nobody may call it", reason="METHOD_NOT_ALLOWED"
            )
        token = _bearer(context)
        if not token:
            raise Unauthenticated(
                f"{method} needs an API token: send 'authorization: Bearer <token>' (omactl --token or OMA_TOKEN; "
                "the first admin token is in the OMA's <data dir>/admin.token)",
                reason="TOKEN_MISSING",
            )
        operator = await self.tokens.authenticate(token)
        needed = _ROLES[access]
        if operator.role < needed:
            raise PermissionDenied(
                f"{method} needs the {needed.label} role; token {operator.name} ({operator.token_id}) has "
                f"{operator.role.label}: ask an admin for a token with that role",
                reason="ROLE_TOO_LOW",
                required_role=needed.label,
                role=operator.role.label,
                token_id=operator.token_id,
            )
        return operator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        access = access_of(method)
        if handler is not None and method in APPLIANCE_AUDITED:
            return rewrapped(handler, lambda behavior, *_: self._wrap_appliance(behavior, method))
        if handler is None or access in (Access.PUBLIC, Access.APPLIANCE):
            return handler

        def rewrap(behavior: Callable[..., Any], request_streaming: bool, response_streaming: bool) -> Any:
            if inspect.isasyncgenfunction(behavior):
                return self._wrap_stream(behavior, method, access)
            return self._wrap_unary(behavior, method, access)

        return rewrapped(handler, rewrap)

    def _wrap_unary(self, behavior: Callable[..., Awaitable[Any]], method: str, access: Access | None) -> Any:
        recorded = audited(method, access)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                operator = await self.authorize(method, access, context)
            except Exception as exc:  # a refusal, or a database that failed to answer: never the handler
                if recorded and isinstance(exc, DomainError):
                    caller = _refused_caller(exc, context)
                    try:
                        await self.audit.refused(caller, method, resource_of(request), exc.category.name, exc.reason)
                    except Exception:  # the refusal stands even if it cannot be recorded
                        logger.opt(exception=True).error("could not record a refused {method} call", method=method)
                await fail(context, exc, method)
            if not recorded:
                return await behavior(request, context)
            return await self._audited(behavior, request, context, method, _caller(operator, context))

        return wrapper

    def _wrap_appliance(self, behavior: Callable[..., Awaitable[Any]], method: str) -> Any:
        """An appliance's unary call: no token to check (its service checks the join token or certificate), but
        recorded like an operator's."""

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await self._audited(behavior, request, context, method, _appliance_caller(context))

        return wrapper

    async def _audited(
        self,
        behavior: Callable[..., Awaitable[Any]],
        request: Any,
        context: grpc.aio.ServicerContext,
        method: str,
        caller: Caller,
    ) -> Any:
        try:
            entry = await self.audit.begin(caller, method, resource_of(request))
        except Exception as exc:  # no record, no call: an unaudited mutation is what the log must not allow
            await fail(context, exc, method)
        ended = False

        async def end(outcome: str, reason: str = "") -> None:
            nonlocal ended
            if not ended:
                ended = True
                await self.audit.end(entry, outcome, reason)

        outcome, reason = "UNKNOWN", ""
        hook = BEFORE_ERROR_STATUS.set(end)  # an error is recorded before its status leaves (status.py)
        try:
            response = await behavior(request, context)
            outcome = OK
            return response
        except grpc.aio.AbortError:
            outcome, reason = ended_with(context)
            raise
        except asyncio.CancelledError:
            outcome = "CANCELLED"  # the client went away: the effect may or may not have happened
            raise
        finally:
            BEFORE_ERROR_STATUS.reset(hook)
            await end(outcome, reason)

    def _wrap_stream(self, behavior: Callable[..., AsyncIterator[Any]], method: str, access: Access | None) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                await self.authorize(method, access, context)
            except Exception as exc:
                await fail(context, exc, method)
            async for response in behavior(request, context):
                yield response

        return wrapper
