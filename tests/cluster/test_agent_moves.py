"""Real replications across several `oma-server` processes on one PostgreSQL (issue #18), with the reference agent
and a real cloud (tests/cluster/deployment.py): a process that dies mid-job loses nothing — the stream moves to
another process and the job completes; a job whose provisioning process dies is taken over by another's janitor.
Every replica ends byte-identical to its source and read back by the OMA."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oma.v1 import job_pb2, job_pb2_grpc, replication_pb2
from oma_server.cloudstack.sim_seed import DEFAULT_SEED
from tests.cluster.deployment import Deployment, until
from tests.harness.victims import CloudStackProcess
from tests.pg import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

COMPLETED = replication_pb2.REPLICATION_JOB_STATUS_COMPLETED


async def _deployment(root: Path, postgres: PostgresServer, seed: Path | None = None) -> Deployment:
    cloud = CloudStackProcess(root / "cloudstack", root / "cloudstack.log", seed)
    await asyncio.to_thread(cloud.start)
    return Deployment(root, postgres.create_database(), cloud)


@pytest.fixture
async def deployment(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[Deployment]:
    world = await _deployment(tmp_path, postgres)
    yield world
    await asyncio.to_thread(world.stop)


async def _verified_by(world: Deployment, job_id: str) -> None:
    """Every replica was read back (the whole disk after an initial copy) by the OMA after `job_id`."""
    disks = (await world.vm()).disks
    assert all(d.verification.job_id == job_id for d in disks), [d.verification for d in disks]
    assert all(d.verification.blocks_read == d.verification.block_count > 0 for d in disks)


async def test_a_replication_completes_after_the_process_holding_its_stream_is_killed(deployment: Deployment) -> None:
    world = deployment
    home = await asyncio.to_thread(world.add_process)
    holder = await asyncio.to_thread(world.add_process)
    survivor = await asyncio.to_thread(world.add_process)
    await world.start_agent([holder, survivor])
    job_id = await world.discover_and_replicate(on=home)  # discovery and the start reach the agent via `holder`

    async def copying() -> bool:
        seen = await world.job(job_id)
        return seen.bytes_total > 0 and seen.bytes_done >= seen.bytes_total // 4

    await until("a quarter of the copy is done", copying)
    seen = await world.job(job_id)
    assert seen.bytes_done < seen.bytes_total, "the copy ended before the kill"
    await asyncio.to_thread(holder.kill)
    # The database frees a dead holder's lock as its connection closes; the agent dials its next address at once.
    await until("the agent streams to the survivor", lambda: world.streams_to(survivor), 15)

    async def completed() -> bool:
        return (await world.job(job_id)).status == COMPLETED

    await until("the job completes through the survivor", completed, 90)
    assert await world.consistent(home) == []
    await _verified_by(world, job_id)  # by `home`, which attached the replicas, though another applied the end


async def test_a_job_whose_provisioning_process_dies_is_taken_over(tmp_path: Path, postgres: PostgresServer) -> None:
    # Slow CloudStack async jobs: provisioning takes seconds, so the kill lands in it.
    seed = tmp_path / "cloud-seed.json"
    seed.write_text(json.dumps({**DEFAULT_SEED, "job_delay_s": 1.0}))
    world = await _deployment(tmp_path, postgres, seed)
    try:
        starter = await asyncio.to_thread(world.add_process)
        taker = await asyncio.to_thread(world.add_process, "--janitor-interval", "0.5")
        await world.start_agent([taker])
        job_id = await world.discover_and_replicate(on=starter)

        async def provisioning_begun() -> bool:
            async with taker.channel() as channel:
                entries = (
                    await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
                        job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=100)
                    )
                ).entries
            return any(e.step == "create_volume" for e in entries)

        await until("provisioning has begun in the starting process", provisioning_begun, 30)
        await asyncio.to_thread(starter.kill)

        async def completed() -> bool:
            return (await world.job(job_id)).status == COMPLETED

        await until("the other process provisions the job and it completes", completed, 120)
        assert await world.consistent(taker) == []
        await _verified_by(world, job_id)
    finally:
        await asyncio.to_thread(world.stop)
