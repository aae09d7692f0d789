"""CompleteMigration through the real API: a live failover on the CloudStack simulator, then the migration closed;
the appliance, played message by message, receives the release_source command and answers it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from oma.v1 import job_pb2, job_pb2_grpc, vm_context_pb2, vm_context_pb2_grpc
from oma_server.db.models import NbdExport, Volume
from tests.clients import oma_channel
from tests.failover.helpers import VM_LIVE, get_vm, play_replication, replicate, sim_of, start_oma, wait_job, world
from tests.failover.test_paths import live_failover_powered_off
from vma.v1 import stream_pb2
from vma_client_stubs.errors import error_info_of

pytestmark = pytest.mark.nbd


async def complete(channel: grpc.aio.Channel, vm_id: str) -> vm_context_pb2.CompleteMigrationResponse:
    stub = vm_context_pb2_grpc.VmContextServiceStub(channel)
    return await stub.CompleteMigration(vm_context_pb2.CompleteMigrationRequest(vm_context_id=vm_id))  # type: ignore[no-any-return]


async def test_complete_migration_keeps_the_volumes_and_releases_the_source(tmp_path: Path, database_url: str) -> None:
    oma = await start_oma(tmp_path, database_url)
    sim = sim_of(oma)
    try:
        async with oma_channel(oma) as channel:
            r, _, vm, job = await live_failover_powered_off(channel, sim, tmp_path)
            # not yet: the live failover runs
            with pytest.raises(grpc.aio.AioRpcError) as early:
                await complete(channel, r.vm_id)
            assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info_of(early.value).reason == "JOB_ALREADY_ACTIVE"  # type: ignore[union-attr]
            await play_replication(r.stream, tmp_path, "final", r.sources)
            done = await wait_job(oma, channel, job.id)
            assert (await get_vm(channel, r.vm_id)).status == VM_LIVE
            volumes = await oma.app.db.run(lambda: sorted(v.cloudstack_id for v in Volume.select()))
            before = world(sim)

            reply = await complete(channel, r.vm_id)
            assert reply.vm_context.status == vm_context_pb2.VM_CONTEXT_STATUS_COMPLETED
            assert reply.target_vm_id == done.target_vm_id
            assert sorted(reply.kept_volume_ids) == volumes
            assert world(sim) == before  # nothing in CloudStack changed: the volumes are the VM's disks
            assert all(sim.state.volumes[v].get("virtualmachineid") == done.target_vm_id for v in volumes)
            assert sim.state.vms[done.target_vm_id]["state"] == "Running"
            assert await oma.app.db.run(NbdExport.select().count) == 0
            # the appliance is told to release the source side, and its answer is recorded
            command = (await r.stream.recv_until("command", timeout=20)).command
            assert command.WhichOneof("kind") == "release_source" and command.command_id == reply.release_command_id
            assert command.release_source.vm_uuid == vm.vm_uuid
            await r.stream.send(
                command_result=stream_pb2.CommandResult(
                    command_id=command.command_id,
                    outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED,
                    detail="CBT disabled on 2 disk(s); 0 snapshot(s) deleted",
                )
            )
            await r.stream.recv_until("command_result_ack", timeout=20, command_id=command.command_id)
            log = await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
                job_pb2.ListJobLogEntriesRequest(job_id=r.vm_id, page_size=100)
            )
            steps = {e.step: e for e in log.entries}
            assert done.target_vm_id in steps["complete_migration"].message
            assert "CBT disabled on 2 disk(s)" in steps["release_source"].message
            assert steps["release_source"].status == job_pb2.JOB_LOG_STATUS_COMPLETED

            again = await complete(channel, r.vm_id)  # closing a closed migration returns it as it is
            assert again.release_command_id == reply.release_command_id
            with pytest.raises(grpc.aio.AioRpcError) as error:  # a completed VM's volumes are the CloudStack VM's
                await vm_context_pb2_grpc.VmContextServiceStub(channel).DeleteVmContext(
                    vm_context_pb2.DeleteVmContextRequest(id=r.vm_id)
                )
            assert error_info_of(error.value).reason == "VM_NOT_DELETABLE"  # type: ignore[union-attr]
            await r.stream.close()
    finally:
        await oma.stop(grace=0.2)


async def test_only_a_live_vm_completes(tmp_path: Path) -> None:
    oma = await start_oma(tmp_path)
    try:
        async with oma_channel(oma) as channel:
            r = await replicate(channel, tmp_path)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await complete(channel, r.vm_id)
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info_of(error.value).reason == "VM_NOT_FAILED_OVER_LIVE"  # type: ignore[union-attr]
            assert (await get_vm(channel, r.vm_id)).status == vm_context_pb2.VM_CONTEXT_STATUS_READY_FOR_FAILOVER
            await r.stream.close()
    finally:
        await oma.stop(grace=0.2)
