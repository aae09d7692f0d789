"""Operators authenticate and roles limit them (issue #14): one table of method → access, checked by one interceptor
against API tokens stored as hashes; health and reflection stay open."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from oma.v1 import (
    access_pb2,
    access_pb2_grpc,
    appliance_pb2,
    appliance_pb2_grpc,
    failover_pb2,
    failover_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
)
from oma_server.api.access import METHOD_ACCESS, Access, access_of
from oma_server.db.models import ApiToken, utcnow
from oma_server.security.tokens import ADMIN_TOKEN_FILE, Role
from oma_server.server import REFLECTION_ONLY, OmaServer
from tests.clients import endpoint
from vma_client_stubs.connection import Endpoint, aio_channel
from vma_client_stubs.errors import error_info_of


def served_methods(server: OmaServer) -> set[str]:
    """Every method the running server answers, read from the descriptors of the services it registered."""
    from google.protobuf import descriptor_pool

    from oma_server.server import SERVICE_NAMES

    pool = descriptor_pool.Default()
    return {f"/{name}/{m.name}" for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods}


def test_every_served_rpc_has_an_access_entry_and_the_table_no_stale_one(oma_server: OmaServer) -> None:
    served = served_methods(oma_server)
    assert served, "the server serves no service?"
    missing = sorted(m for m in served if access_of(m) is None)
    assert missing == [], f"RPCs without an entry in oma_server/api/access.py METHOD_ACCESS: {missing}"
    stale = sorted(set(METHOD_ACCESS) - served)
    assert stale == [], f"METHOD_ACCESS names RPCs the server does not serve: {stale}"
    assert all(m.split("/")[1] not in REFLECTION_ONLY for m in METHOD_ACCESS)


def test_the_check_sees_an_rpc_without_an_entry() -> None:
    assert access_of("/oma.v1.ReplicationService/SomethingNew") is None
    assert access_of("/grpc.health.v1.Health/Check") is Access.PUBLIC


def as_token(server: OmaServer, token: str) -> grpc.aio.Channel:
    return aio_channel(Endpoint(f"127.0.0.1:{server.port}", endpoint(server).ca_pem, token=token))


async def refused(call: object) -> tuple[grpc.StatusCode, str, dict[str, str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    info = error_info_of(error.value)
    assert info is not None, "every refusal carries an ErrorInfo"
    return error.value.code(), info.reason, dict(info.metadata), error.value.details() or ""


async def new_token(server: OmaServer, role: Role, ttl: timedelta | None = None) -> str:
    return (await server.app.tokens.create(f"t-{role.label}", role, ttl)).secret


async def test_no_token_is_unauthenticated_but_health_and_reflection_answer(oma_server: OmaServer) -> None:
    async with as_token(oma_server, "") as channel:
        code, reason, _, details = await refused(
            appliance_pb2_grpc.ApplianceServiceStub(channel).ListAppliances(appliance_pb2.ListAppliancesRequest())
        )
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
        assert "ListAppliances needs an API token" in details
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [s.name async for r in call for s in r.list_services_response.service]
        assert "oma.v1.ReplicationService" in services


@pytest.mark.parametrize("bad", ["nonsense", "oma_0123456789abcdef_" + "A" * 43, ""])
async def test_a_bad_token_is_unauthenticated_and_never_echoed(oma_server: OmaServer, bad: str) -> None:
    token = bad or (await new_token(oma_server, Role.ADMIN))[:-1] + "x"  # a real id with a wrong secret
    async with as_token(oma_server, token) as channel:
        code, reason, metadata, details = await refused(
            appliance_pb2_grpc.ApplianceServiceStub(channel).ListAppliances(appliance_pb2.ListAppliancesRequest())
        )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert token not in details and token not in str(metadata)


async def test_a_viewer_reads_but_cannot_start_a_failover(oma_server: OmaServer) -> None:
    async with as_token(oma_server, await new_token(oma_server, Role.VIEWER)) as channel:
        listed = await replication_pb2_grpc.ReplicationServiceStub(channel).ListReplicationJobs(
            replication_pb2.ListReplicationJobsRequest()
        )
        assert list(listed.jobs) == []
        code, reason, metadata, details = await refused(
            failover_pb2_grpc.FailoverServiceStub(channel).StartFailover(
                failover_pb2.StartFailoverRequest(vm_context_id="vm-1", kind=failover_pb2.FAILOVER_JOB_KIND_TEST)
            )
        )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_TOO_LOW")
    assert metadata["required_role"] == "operator" and metadata["role"] == "viewer"
    assert "StartFailover needs the operator role" in details


async def test_an_operator_cannot_manage_appliances_or_tokens(oma_server: OmaServer) -> None:
    async with as_token(oma_server, await new_token(oma_server, Role.OPERATOR)) as channel:
        enroll = appliance_pb2_grpc.ApplianceServiceStub(channel).EnrollAppliance(
            appliance_pb2.EnrollApplianceRequest(name="vma-x")
        )
        assert (await refused(enroll))[:2] == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_TOO_LOW")
        create = access_pb2_grpc.AccessServiceStub(channel).CreateApiToken(
            access_pb2.CreateApiTokenRequest(name="more", role=access_pb2.ROLE_ADMIN)
        )
        assert (await refused(create))[:2] == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_TOO_LOW")
    assert await oma_server.app.db.run(lambda: ApiToken.select().where(ApiToken.name == "more").count()) == 0


async def test_a_revoked_or_expired_token_is_refused(oma_server: OmaServer) -> None:
    admin = access_pb2_grpc.AccessServiceStub(channel := aio_channel(endpoint(oma_server)))
    try:
        created = await admin.CreateApiToken(
            access_pb2.CreateApiTokenRequest(name="ci-bot", role=access_pb2.ROLE_VIEWER, ttl_seconds=3600)
        )
        assert created.secret.startswith(f"oma_{created.token.id}_") and created.token.HasField("expires_at")
        async with as_token(oma_server, created.secret) as bot:
            stub = appliance_pb2_grpc.ApplianceServiceStub(bot)
            await stub.ListAppliances(appliance_pb2.ListAppliancesRequest())  # works
            revoked = await admin.RevokeApiToken(access_pb2.RevokeApiTokenRequest(id=created.token.id))
            assert revoked.token.HasField("revoked_at")
            code, reason, _, _ = await refused(stub.ListAppliances(appliance_pb2.ListAppliancesRequest()))
            assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
        listed = await admin.ListApiTokens(access_pb2.ListApiTokensRequest())
        assert {t.name for t in listed.tokens} == {"initial-admin", "ci-bot"}
        assert all(created.secret not in str(t) for t in listed.tokens)
        missing = admin.RevokeApiToken(access_pb2.RevokeApiTokenRequest(id="0123456789abcdef"))
        assert (await refused(missing))[:2] == (grpc.StatusCode.NOT_FOUND, "TOKEN_NOT_FOUND")
    finally:
        await channel.close()
    expiring = await new_token(oma_server, Role.ADMIN, timedelta(seconds=3600))
    token_id = expiring.split("_")[1]
    await oma_server.app.db.tx(
        lambda: ApiToken.update(expires_at=utcnow() - timedelta(seconds=1)).where(ApiToken.id == token_id).execute()
    )
    async with as_token(oma_server, expiring) as late:
        code, reason, _, _ = await refused(
            appliance_pb2_grpc.ApplianceServiceStub(late).ListAppliances(appliance_pb2.ListAppliancesRequest())
        )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


async def test_tokens_are_stored_as_hashes_and_the_initial_one_0600(oma_server: OmaServer) -> None:
    data_dir = oma_server.app.settings.data_dir
    initial = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    assert stat.S_IMODE((data_dir / ADMIN_TOKEN_FILE).stat().st_mode) == 0o600
    rows = await oma_server.app.db.run(lambda: list(ApiToken.select()))
    assert [r.name for r in rows] == ["initial-admin"] and rows[0].role == "admin"
    secret = initial.split("_", 2)[2]
    assert all(secret not in str(value) for r in rows for value in r.__data__.values())
    db_file = Path(oma_server.app.db.url.removeprefix("sqlite:///")) if "sqlite" in oma_server.app.db.url else None
    if db_file is not None:
        assert secret.encode() not in db_file.read_bytes()


async def test_the_initial_admin_token_is_made_once(oma_server: OmaServer) -> None:
    app = oma_server.app
    assert await app.tokens.ensure_initial_admin(app.settings.data_dir) is None  # tokens exist: none made
    assert await app.db.run(lambda: ApiToken.select().count()) == 1
