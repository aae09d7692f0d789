"""The verification gate (issue #15): no failover onto a replica the OMA has not read back at its disk's current
change id. Readiness names the unverified disks, StartFailover is FAILED_PRECONDITION, and the next completed
incremental (whose read-back verifies the replicas) opens the gate again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from oma.v1 import failover_pb2, replication_pb2, replication_pb2_grpc
from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import Disk
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.failover.helpers import (
    TEST,
    failover_stub,
    get_vm,
    map_network,
    play_replication,
    replicas_released,
    replicate,
    sim_of,
    start_oma,
)

pytestmark = pytest.mark.nbd


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = await start_oma(tmp_path)
    yield server
    await server.stop(grace=0.2)


async def readiness(channel: grpc.aio.Channel, vm_id: str) -> dict[str, failover_pb2.ReadinessCheck]:
    reply = await failover_stub(channel).CheckFailoverReadiness(
        failover_pb2.CheckFailoverReadinessRequest(vm_context_id=vm_id, kind=TEST)
    )
    return {c.name: c for c in reply.checks}


async def test_an_unverified_replica_blocks_failover_until_a_sync_verifies_it(oma: OmaServer, tmp_path: Path) -> None:
    async with oma_channel(oma) as channel:
        r = await replicate(channel, tmp_path)
        await map_network(channel, sim_of(oma), vm_id=r.vm_id)
        checks = await readiness(channel, r.vm_id)
        assert checks["replicas_verified"].passed, checks["replicas_verified"].reason
        assert all(c.passed for c in checks.values()), [c for c in checks.values() if not c.passed]

        # The read-back of disk 2001's last sync was cut short (an OMA restart leaves its map pending).
        vm = await get_vm(channel, r.vm_id)
        cut = vm.disks[1]

        def cut_short() -> None:
            disk = Disk.get_by_id(cut.id)
            BlockMap.update(status="pending", hashes=None, digest="").where(
                (BlockMap.disk == disk.id) & (BlockMap.change_id == disk.last_change_id)
            ).execute()

        await oma.app.db.tx(cut_short)
        checks = await readiness(channel, r.vm_id)
        gate = checks["replicas_verified"]
        assert not gate.passed
        assert f"disk {cut.key} at change id {cut.last_change_id} was synced but not read back" in gate.reason
        assert f"disk {vm.disks[0].key}" not in gate.reason, "only the unverified disk is named"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await failover_stub(channel).StartFailover(
                failover_pb2.StartFailoverRequest(vm_context_id=r.vm_id, kind=TEST)
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "replicas_verified" in (refused.value.details() or "")

        # An incremental: its read-back verifies both replicas at their new change ids.
        await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
            replication_pb2.StartReplicationRequest(vm_context_id=r.vm_id)
        )
        await play_replication(r.stream, tmp_path, "2", r.sources)
        await replicas_released(channel, r.vm_id)  # read back before they leave the OMA VM
        vm = await get_vm(channel, r.vm_id)
        assert [d.verification.change_id for d in vm.disks] == [d.last_change_id for d in vm.disks]
        assert (await readiness(channel, r.vm_id))["replicas_verified"].passed
        await r.stream.close()
