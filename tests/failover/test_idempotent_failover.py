"""Failover's mutating RPCs retried after a lost answer start one job each (issue #19), and every job they start —
test and live failover, its final sync, cleanup, rollback, source power — is followed to its end by one WatchJob."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from oma.v1 import failover_pb2, job_pb2, job_pb2_grpc, replication_pb2, vm_context_pb2, vm_context_pb2_grpc
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.failover.helpers import (
    LIVE,
    TEST,
    answer_power,
    failover_stub,
    get_vm,
    map_network,
    play_replication,
    replicate,
    sim_of,
)
from tests.test_idempotency import retried

pytestmark = pytest.mark.nbd
FAILOVER_DONE = failover_pb2.FAILOVER_JOB_STATUS_COMPLETED
REPLICATION_DONE = replication_pb2.REPLICATION_JOB_STATUS_COMPLETED


async def watched_to_the_end(channel: grpc.aio.Channel, job_id: str, timeout: float = 30) -> job_pb2.JobUpdate:
    """WatchJob from 0 until the server ends the stream (it does right after the final state): the last update."""
    updates: list[job_pb2.JobUpdate] = []

    async def follow() -> None:
        async for reply in job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id=job_id)):
            updates.append(reply.update)

    await asyncio.wait_for(follow(), timeout)
    assert updates and updates[0].kind == job_pb2.UPDATE_KIND_SNAPSHOT
    return updates[-1]


async def listed_failover_jobs(channel: grpc.aio.Channel, vm_id: str) -> list[str]:
    request = failover_pb2.ListFailoverJobsRequest(vm_context_id=vm_id)
    return [j.id for j in (await failover_stub(channel).ListFailoverJobs(request)).jobs]


async def test_every_failover_rpc_retried_starts_one_job_and_every_kind_is_watched_to_its_end(
    oma: OmaServer, tmp_path: Path
) -> None:
    sim = sim_of(oma)
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim, vm_id=r.vm_id)
        vm = await get_vm(channel, r.vm_id)
        stub = failover_stub(channel)

        start = failover_pb2.StartFailoverRequest(vm_context_id=r.vm_id, kind=TEST, request_id="test-1")
        test = (await retried(stub.StartFailover, start)).job
        assert (test.kind, bool(test.id), test.revision > 0) == (failover_pb2.FAILOVER_JOB_KIND_TEST, True, True)
        assert (await watched_to_the_end(channel, test.id)).failover_job.status == FAILOVER_DONE

        cleanup = failover_pb2.CleanupFailoverRequest(vm_context_id=r.vm_id, request_id="cleanup-1")
        cleaned = (await retried(stub.CleanupFailover, cleanup)).job
        assert cleaned.kind == failover_pb2.FAILOVER_JOB_KIND_CLEANUP
        assert (await watched_to_the_end(channel, cleaned.id)).failover_job.status == FAILOVER_DONE
        assert await listed_failover_jobs(channel, r.vm_id) == [cleaned.id, test.id]  # one cleanup, not two

        live_request = failover_pb2.StartFailoverRequest(vm_context_id=r.vm_id, kind=LIVE, request_id="live-1")
        live = (await retried(stub.StartFailover, live_request)).job
        await answer_power(r.stream, "power_off", vm.vm_uuid)
        final_job_id, _ = await play_replication(r.stream, tmp_path, "final", r.sources)
        final = (await watched_to_the_end(channel, final_job_id)).replication_job
        assert (final.kind, final.status) == (replication_pb2.REPLICATION_JOB_KIND_FINAL, REPLICATION_DONE)
        assert (await watched_to_the_end(channel, live.id)).failover_job.status == FAILOVER_DONE

        rollback = failover_pb2.RollbackFailoverRequest(vm_context_id=r.vm_id, power_on_source=True, request_id="rb-1")
        rolled = (await retried(stub.RollbackFailover, rollback)).job
        assert rolled.kind == failover_pb2.FAILOVER_JOB_KIND_ROLLBACK
        await answer_power(r.stream, "power_on", vm.vm_uuid)
        assert (await watched_to_the_end(channel, rolled.id)).failover_job.status == FAILOVER_DONE
        assert await listed_failover_jobs(channel, r.vm_id) == [rolled.id, live.id, cleaned.id, test.id]

        vms = vm_context_pb2_grpc.VmContextServiceStub(channel)
        for kind, rpc, request_type in (
            ("power_off", vms.PowerOffSourceVm, vm_context_pb2.PowerOffSourceVmRequest),
            ("power_on", vms.PowerOnSourceVm, vm_context_pb2.PowerOnSourceVmRequest),
        ):
            power = (await retried(rpc, request_type(vm_context_id=r.vm_id, request_id=f"{kind}-1"))).job
            await answer_power(r.stream, kind, vm.vm_uuid)
            assert (await watched_to_the_end(channel, power.id)).failover_job.status == FAILOVER_DONE
        assert len(await listed_failover_jobs(channel, r.vm_id)) == 6
        await r.stream.close()
