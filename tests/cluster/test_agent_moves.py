"""Real replications across several `oma-server` processes on one PostgreSQL (issue #18), with the reference agent
and a real cloud (tests/cluster/deployment.py): a process that dies mid-job loses nothing — the stream moves to
another process and the job completes; a job whose provisioning process dies is taken over by another's janitor.
Every replica ends byte-identical to its source and read back by the OMA. `python -m tests.cluster.soak` runs them
many times with seeded kill points."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cluster.deployment import (
    deployment,
    process_started_mid_copy,
    provisioning_process_killed,
    slow_cloud_seed,
    stream_holder_killed,
)
from tests.pg import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


async def test_a_replication_completes_after_the_process_holding_its_stream_is_killed(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    world = await deployment(tmp_path, postgres.create_database())
    try:
        await stream_holder_killed(world)
    finally:
        await asyncio.to_thread(world.stop)


async def test_a_job_whose_provisioning_process_dies_is_taken_over(tmp_path: Path, postgres: PostgresServer) -> None:
    world = await deployment(tmp_path, postgres.create_database(), slow_cloud_seed(tmp_path / "cloud-seed.json"))
    try:
        await provisioning_process_killed(world)
    finally:
        await asyncio.to_thread(world.stop)


async def test_a_process_starting_mid_copy_leaves_the_other_processes_replicas_alone(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    world = await deployment(tmp_path, postgres.create_database())
    try:
        await process_started_mid_copy(world)
    finally:
        await asyncio.to_thread(world.stop)
