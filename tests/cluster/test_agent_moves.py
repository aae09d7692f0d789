"""Real replications across several `oma-server` processes on one PostgreSQL (issue #18), with the reference agent
and a real cloud (tests/cluster/deployment.py): a process that dies mid-job loses nothing — the stream moves to
another process and the job completes; when the process that attached a job's replicas dies with its NBD server,
another takes them over and the agent's copies move there; a job whose provisioning process dies is taken over by
another's janitor; a process that starts while another copies leaves that copy's replicas alone. Every replica ends
byte-identical to its source and read back by the OMA. `python -m tests.cluster.soak` runs the kills many times
with seeded kill points."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.cluster.deployment import (
    Deployment,
    deployment,
    home_process_killed,
    process_started_mid_copy,
    provisioning_process_killed,
    scheduler_leader_killed,
    slow_cloud_seed,
    stream_holder_killed,
)
from tests.pg import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


async def _play(
    root: Path, postgres: PostgresServer, scenario: Callable[[Deployment], Awaitable[None]], *, slow_cloud: bool = False
) -> None:
    seed = slow_cloud_seed(root / "cloud-seed.json") if slow_cloud else None
    world = await deployment(root, postgres.create_database(), seed)
    try:
        await scenario(world)
    finally:
        await asyncio.to_thread(world.stop)


async def test_a_replication_completes_after_the_process_holding_its_stream_is_killed(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    await _play(tmp_path, postgres, stream_holder_killed)


async def test_a_replication_completes_after_the_process_that_attached_its_replicas_dies(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    await _play(tmp_path, postgres, home_process_killed)


async def test_a_job_whose_provisioning_process_dies_is_taken_over(tmp_path: Path, postgres: PostgresServer) -> None:
    await _play(tmp_path, postgres, provisioning_process_killed, slow_cloud=True)


async def test_a_process_starting_mid_copy_leaves_the_other_processes_replicas_alone(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    await _play(tmp_path, postgres, process_started_mid_copy)


async def test_the_schedules_go_on_when_the_scheduler_leader_dies(tmp_path: Path, postgres: PostgresServer) -> None:
    await _play(tmp_path, postgres, scheduler_leader_killed)
