"""A replica found different at rest is repaired block by block (issue #15): the reference agent, driven through the
public API over the OMA's real NBD exports and the CloudStack simulator, recopies exactly the mismatching blocks.

A byte of one replica is flipped at rest; VerifyVmContext finds it (block 3 of that disk) and failover is refused;
the next sync is an incremental of both disks in which the bad disk also copies its block 3 (DiskTarget.
repair_extents; the job log says so) — 2 MiB, where a whole-disk repair would copy 16 MiB — and nothing else, since
the guest wrote nothing meanwhile. Its read-back verifies the replica again, the gate opens, a second verification
passes and the replica is byte for byte the source disk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from oma.common.v1 import jobs_pb2
from oma.v1 import (
    appliance_pb2,
    appliance_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    vm_context_pb2,
)
from oma_server.integrity.blocks import BLOCK_SIZE
from oma_server.server import OmaServer
from tests.agent.helpers import make_agent
from tests.clients import oma_channel
from tests.factories import enroll
from tests.failover.helpers import COMPLETED, FAILED, VM_READY, get_vm, replicas_released, start_oma, wait_job
from tests.integrity.test_at_rest import flip, gate, log_of, replica_file, verify, vms_stub
from tests.omactl.conftest import run_omactl, target_of
from tests.waiting import until
from vma_client_stubs.agent.vcenter import FakeVCenter

pytestmark = [pytest.mark.nbd, pytest.mark.slow]
MIB = 1 << 20
R = replication_pb2


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = await start_oma(tmp_path)
    yield server
    await server.stop(grace=0.2)


async def sync(channel: grpc.aio.Channel, vm_id: str) -> R.ReplicationJob:
    """StartReplication, then WatchJob to its end; the job as it ended."""
    stub = replication_pb2_grpc.ReplicationServiceStub(channel)
    job = (await stub.StartReplication(R.StartReplicationRequest(vm_context_id=vm_id))).job
    last = None
    async for reply in job_pb2_grpc.JobServiceStub(channel).WatchJob(job_pb2.WatchJobRequest(job_id=job.id)):
        last = reply.update
    assert last is not None
    done = last.replication_job
    assert done.status == R.REPLICATION_JOB_STATUS_COMPLETED, done
    return done


async def test_a_byte_flipped_at_rest_is_repaired_by_recopying_only_its_block(oma: OmaServer, tmp_path: Path) -> None:
    vcenter = FakeVCenter(tmp_path / "vcenter")
    source = vcenter.create_vm("repair-01", [8 * MIB, 16 * MIB], seed=15)
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        appliances = appliance_pb2_grpc.ApplianceServiceStub(channel)

        async def connected() -> bool:
            reply = await appliances.GetAppliance(appliance_pb2.GetApplianceRequest(id=enrolled.appliance_id))
            return reply.appliance.connection_state == appliance_pb2.CONNECTION_STATE_CONNECTED

        async with make_agent(oma, enrolled, vcenter, tmp_path / "agent"):
            await until(connected, "the agent's stream")
            found = await vms_stub(channel).DiscoverVms(
                vm_context_pb2.DiscoverVmsRequest(
                    appliance_id=enrolled.appliance_id, name_filter="repair-01", register=True, timeout_seconds=30
                )
            )
            [vm] = found.vm_contexts
            await sync(channel, vm.id)
            await replicas_released(channel, vm.id)
            vm = await get_vm(channel, vm.id)
            good, bad = vm.disks[0], vm.disks[1]  # 4 blocks, 8 blocks
            bad_replica = await replica_file(oma, bad.volume_id)
            flip(bad_replica, 3 * BLOCK_SIZE + 4321)  # the storage rots block 3

            check = await wait_job(oma, channel, (await verify(channel, vm.id)).id)
            assert check.status == FAILED and check.error.reason == "REPLICA_MISMATCH", check.error
            assert f"disk {bad.key}: block(s) 3" in check.error.message
            assert not (await gate(channel, vm.id)).passed

            repair = await sync(channel, vm.id)
            disks = {d.disk_id: d for d in repair.disks}
            assert repair.kind == R.REPLICATION_JOB_KIND_INCREMENTAL
            assert disks[bad.id].mode == jobs_pb2.COPY_MODE_INCREMENTAL and not disks[bad.id].full_copy_reason
            # exactly the bad block: the guest wrote nothing, so CBT adds nothing, and the good disk copies nothing
            assert disks[bad.id].bytes_total == BLOCK_SIZE, disks[bad.id]
            assert disks[good.id].bytes_total == 0, disks[good.id]
            entries = await log_of(channel, repair.id)
            assert any(
                e.step == "repair" and f"disk {bad.key}: incremental, recopying block(s) 3 " in e.message
                for e in entries
            ), [e.message for e in entries]

            await replicas_released(channel, vm.id)  # after the read-back
            entries = await log_of(channel, repair.id)
            read_back = [e.message for e in entries if e.step == "verify" and f"disk {bad.key}" in e.message]
            assert any(" verified: " in m and "read back 1 of 8 block(s)" in m for m in read_back), read_back
            assert (await gate(channel, vm.id)).passed
            again = await wait_job(oma, channel, (await verify(channel, vm.id)).id)
            assert again.status == COMPLETED, again.error
            assert (await get_vm(channel, vm.id)).status == VM_READY
            size = 16 * MIB
            assert bad_replica.read_bytes()[:size] == vcenter.disk_path(source.uuid, bad.key).read_bytes()[:size]

            shown = await run_omactl(target_of(oma), "--json", "jobs", "log", repair.id)
            assert shown.code == 0, shown
            assert "recopying block(s) 3" in json.dumps(json.loads(shown.out))
