"""Of several OMA processes on one PostgreSQL, exactly one starts a scheduled cutover: the claim is a conditional
UPDATE of the job's row from `scheduled`, and the second of two transactions that both read it `scheduled` waits
for the first one's row lock and then finds nothing to update."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oma.v1 import vm_context_pb2, vm_context_pb2_grpc
from oma_server.db.models import FailoverJob
from oma_server.errors import FailedPrecondition
from oma_server.failover.cutover_runner import claim_scheduled_row
from oma_server.failover.state_machine import FailoverKind, FailoverStatus
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.factories import enroll, inventory
from tests.failover.helpers import start_oma

pytestmark = pytest.mark.postgres


@pytest.fixture
async def oma_on_postgres(tmp_path: Path, postgres: object) -> AsyncIterator[OmaServer]:
    server = await start_oma(tmp_path, postgres.create_database())  # type: ignore[attr-defined]
    yield server
    await server.stop(grace=0.2)


async def test_two_claims_of_one_scheduled_cutover_one_wins(oma_on_postgres: OmaServer) -> None:
    app = oma_on_postgres.app
    async with oma_channel(oma_on_postgres) as channel:
        enrolled = await enroll(channel)
        vm = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
            vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=inventory())
        )
    job = await app.failover_jobs.create(vm.vm_context.id, FailoverKind.LIVE, status=FailoverStatus.SCHEDULED)
    both_read = threading.Barrier(2, timeout=10)

    def claim() -> None:
        # what the cutover runner's claim transaction does: read the row (scheduled), then claim it conditionally
        assert FailoverJob.get_by_id(job.id).status == FailoverStatus.SCHEDULED.value
        both_read.wait()  # both transactions have read `scheduled` before either writes
        claim_scheduled_row(job.id)
        FailoverJob.update(status=FailoverStatus.PENDING.value).where(FailoverJob.id == job.id).execute()

    results = await asyncio.gather(app.db.tx(claim), app.db.tx(claim), return_exceptions=True)
    refused = [r for r in results if isinstance(r, FailedPrecondition)]
    assert [r for r in results if r is None] == [None] and len(refused) == 1, results
    assert refused[0].reason == "NOT_SCHEDULED"
    assert (await app.db.run(FailoverJob.get_by_id, job.id)).status == FailoverStatus.PENDING.value
