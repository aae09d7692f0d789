"""The audit log (issue #14): every call of a mutating RPC — done, failed or refused — is recorded with who, what,
which resource, from where and how it ended, listed newest first by the admin-only ListAuditEntries; reads are not
recorded and no secret ever is."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
from google.protobuf import json_format

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
from oma_server.db.models import AuditEntry, utcnow
from oma_server.security.audit import UNFINISHED, AuditFilter, Caller
from oma_server.security.tokens import Role
from oma_server.server import OmaServer
from tests.test_access import as_token, new_token, refused

START_FAILOVER = "/oma.v1.FailoverService/StartFailover"


async def entries(server: OmaServer, **where: str) -> list[access_pb2.AuditEntry]:
    """Every audit entry (newest first) through the RPC, followed to the last page one entry at a time."""
    found: list[access_pb2.AuditEntry] = []
    token = ""
    async with as_token(server, await new_token(server, Role.ADMIN)) as channel:
        stub = access_pb2_grpc.AccessServiceStub(channel)
        while True:
            page = await stub.ListAuditEntries(
                access_pb2.ListAuditEntriesRequest(page_size=1, page_token=token, **where)
            )
            found += page.entries
            token = page.next_page_token
            if not token:
                return found


async def test_done_failed_and_refused_calls_are_recorded_reads_are_not(oma_server: OmaServer) -> None:
    operator = await new_token(oma_server, Role.OPERATOR)
    viewer = await new_token(oma_server, Role.VIEWER)
    async with as_token(oma_server, operator) as channel:
        replication = replication_pb2_grpc.ReplicationServiceStub(channel)
        await replication.ListReplicationJobs(replication_pb2.ListReplicationJobsRequest())  # a read
        missing = replication.StartReplication(replication_pb2.StartReplicationRequest(vm_context_id="vm-nowhere"))
        assert (await refused(missing))[0] == grpc.StatusCode.NOT_FOUND
    async with as_token(oma_server, viewer) as channel:
        denied = failover_pb2_grpc.FailoverServiceStub(channel).StartFailover(
            failover_pb2.StartFailoverRequest(vm_context_id="vm-7", kind=failover_pb2.FAILOVER_JOB_KIND_TEST)
        )
        assert (await refused(denied))[1] == "ROLE_TOO_LOW"
    async with as_token(oma_server, "") as channel:
        anonymous = appliance_pb2_grpc.ApplianceServiceStub(channel).RevokeAppliance(
            appliance_pb2.RevokeApplianceRequest(id="app-9")
        )
        assert (await refused(anonymous))[1] == "TOKEN_MISSING"
    async with as_token(oma_server, await new_token(oma_server, Role.ADMIN)) as channel:
        enrolled = await appliance_pb2_grpc.ApplianceServiceStub(channel).EnrollAppliance(
            appliance_pb2.EnrollApplianceRequest(name="vma-audited")
        )

    log = await entries(oma_server)
    assert [e.method.rsplit("/", 1)[-1] for e in log] == [
        "EnrollAppliance",
        "RevokeAppliance",
        "StartFailover",
        "StartReplication",
    ], "newest first; the reads (ListReplicationJobs, ListAuditEntries) are not recorded"
    enroll, revoke, failover, start = log
    assert (enroll.outcome, enroll.reason, enroll.resource) == ("OK", "", "vma-audited")
    assert enroll.actor.startswith("token:t-admin (") and enroll.finished_at.seconds >= enroll.at.seconds
    assert (revoke.outcome, revoke.reason, revoke.actor, revoke.resource) == (
        "UNAUTHENTICATED",
        "TOKEN_MISSING",
        "anonymous",
        "app-9",
    )
    assert (failover.outcome, failover.reason, failover.resource) == ("PERMISSION_DENIED", "ROLE_TOO_LOW", "vm-7")
    assert failover.token_id and failover.actor == f"token ({failover.token_id})", "the refused token is named"
    assert (start.outcome, start.resource) == ("NOT_FOUND", "vm-nowhere")
    assert start.actor.startswith("token:t-operator (") and start.token_id in start.actor
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in log)
    everything = "".join(json_format.MessageToJson(e) for e in log)
    assert enrolled.credential not in everything, "no secret in the audit log"


async def test_a_created_token_is_recorded_by_name_never_by_secret(oma_server: OmaServer) -> None:
    async with as_token(oma_server, await new_token(oma_server, Role.ADMIN)) as channel:
        created = await access_pb2_grpc.AccessServiceStub(channel).CreateApiToken(
            access_pb2.CreateApiTokenRequest(name="ci-robot", role=access_pb2.ROLE_OPERATOR)
        )
    (entry,) = await entries(oma_server, method="CreateApiToken")
    assert (entry.resource, entry.outcome) == ("ci-robot", "OK")
    assert created.secret not in json_format.MessageToJson(entry)


async def test_filters_and_pages_follow_the_log(oma_server: OmaServer) -> None:
    first = await new_token(oma_server, Role.OPERATOR)
    second = await new_token(oma_server, Role.OPERATOR)
    for token, vm in ((first, "vm-a"), (second, "vm-b"), (first, "vm-c")):
        async with as_token(oma_server, token) as channel:
            await refused(
                failover_pb2_grpc.FailoverServiceStub(channel).CleanupFailover(
                    failover_pb2.CleanupFailoverRequest(vm_context_id=vm)
                )
            )
    every = await entries(oma_server)
    assert [e.resource for e in every] == ["vm-c", "vm-b", "vm-a"], "page_size 1 to the end: each once, in order"
    mine = await entries(oma_server, token_id=every[0].token_id)
    assert [e.resource for e in mine] == ["vm-c", "vm-a"]
    assert [e.resource for e in await entries(oma_server, resource="vm-b")] == ["vm-b"]
    assert len(await entries(oma_server, method="/oma.v1.FailoverService/CleanupFailover")) == 3
    assert await entries(oma_server, method=START_FAILOVER) == []


async def test_only_an_admin_reads_the_log_and_a_foreign_page_token_is_refused(oma_server: OmaServer) -> None:
    async with as_token(oma_server, await new_token(oma_server, Role.OPERATOR)) as channel:
        stub = access_pb2_grpc.AccessServiceStub(channel)
        listed = stub.ListAuditEntries(access_pb2.ListAuditEntriesRequest())
        assert (await refused(listed))[:2] == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_TOO_LOW")
    async with as_token(oma_server, await new_token(oma_server, Role.ADMIN)) as channel:
        stub = access_pb2_grpc.AccessServiceStub(channel)
        garbled = stub.ListAuditEntries(access_pb2.ListAuditEntriesRequest(page_token="not-ours"))
        assert (await refused(garbled))[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")


async def test_an_attempt_cut_short_stays_unfinished_and_old_entries_are_pruned(oma_server: OmaServer) -> None:
    audit = oma_server.app.audit
    cut = await audit.begin(
        Caller("token:t (0123456789abcdef)", "0123456789abcdef", "ipv4:127.0.0.1:1"), START_FAILOVER, "vm-1"
    )
    old = await audit.begin(Caller("anonymous", "", ""), START_FAILOVER, "vm-2")
    await audit.end(old, "OK")
    long_ago = utcnow() - audit.retention - timedelta(days=1)
    await oma_server.app.db.tx(AuditEntry.update(at=long_ago).where(AuditEntry.id == old).execute)

    assert await audit.prune() == 1
    rows, _ = await audit.list(10, "", AuditFilter())
    assert [(r.id, r.outcome, r.finished_at) for r in rows] == [(cut, UNFINISHED, None)]


async def test_a_failed_call_is_recorded_before_its_caller_sees_the_error(oma_server: OmaServer) -> None:
    """The entry of a refused or failed call is ended before the error leaves: an audit write slower than the answer
    (a busy database) still finds the client reading an ended entry. (A loaded `make test` saw UNFINISHED here.)"""
    audit = oma_server.app.audit
    end = audit.end

    async def slow_end(entry_id: int, outcome: str, reason: str = "") -> None:
        await asyncio.sleep(0.3)  # the fault: the database commits the end slowly
        await end(entry_id, outcome, reason)

    audit.end = slow_end  # type: ignore[method-assign]
    operator = await new_token(oma_server, Role.OPERATOR)
    async with as_token(oma_server, operator) as channel:
        missing = replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
            replication_pb2.StartReplicationRequest(vm_context_id="vm-nowhere")
        )
        assert (await refused(missing))[0] == grpc.StatusCode.NOT_FOUND
    [start] = await entries(oma_server)
    assert (start.outcome, start.resource) == ("NOT_FOUND", "vm-nowhere")
