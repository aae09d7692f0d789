"""DeleteVmContext through the real API: the CloudStack simulator over HTTP, nbd-server, a played appliance."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from oma.v1 import (
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import Disk, ReplicationJob, Volume
from tests.clients import oma_channel
from tests.factories import enroll, inventory
from tests.failover.helpers import (
    VM_TEST,
    cleanup,
    map_network,
    play_replication,
    replicate,
    sim_of,
    start_failover,
    start_oma,
    wait_job,
    world,
)
from vma_client_stubs.errors import error_info_of

pytestmark = pytest.mark.nbd


async def delete(channel: grpc.aio.Channel, vm_id: str) -> vm_context_pb2.DeleteVmContextResponse:
    stub = vm_context_pb2_grpc.VmContextServiceStub(channel)
    return await stub.DeleteVmContext(vm_context_pb2.DeleteVmContextRequest(id=vm_id))  # type: ignore[no-any-return]


async def refused(channel: grpc.aio.Channel, vm_id: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await delete(channel, vm_id)
    info = error_info_of(error.value)
    return error.value.code(), info.reason if info else ""


async def test_delete_releases_volumes_and_exports_and_refuses_while_a_job_runs(
    tmp_path: Path, database_url: str
) -> None:
    oma = await start_oma(tmp_path, database_url)
    sim = sim_of(oma)
    try:
        async with oma_channel(oma) as channel:
            r = await replicate(channel, tmp_path)
            replicas = world(sim).volumes
            volumes = await oma.app.db.run(lambda: [v.cloudstack_id for v in Volume.select()])
            assert len(volumes) == 2 and set(volumes) <= replicas
            schedules = schedule_pb2_grpc.ScheduleServiceStub(channel)
            await schedules.CreateSchedule(
                schedule_pb2.CreateScheduleRequest(
                    spec=schedule_pb2.ScheduleSpec(
                        target=schedule_pb2.ScheduleTarget(
                            kind=schedule_pb2.SCHEDULE_TARGET_KIND_VM_CONTEXT, id=r.vm_id
                        ),
                        interval_seconds=3600,
                        rpo_target_seconds=7200,
                    )
                )
            )
            # an incremental runs: refused, nothing removed
            job = (
                await replication_pb2_grpc.ReplicationServiceStub(channel).StartReplication(
                    replication_pb2.StartReplicationRequest(vm_context_id=r.vm_id)
                )
            ).job
            assert await refused(channel, r.vm_id) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_ALREADY_ACTIVE")
            assert world(sim).volumes == replicas
            await play_replication(r.stream, tmp_path, "2", r.sources, job_id=job.id)
            assert oma.app.workflow is not None
            await oma.app.workflow.settled(job.id)

            reply = await delete(channel, r.vm_id)
            assert sorted(reply.deleted_volume_ids) == sorted(volumes)
            assert len(reply.removed_export_names) == 2  # the replicas' exports, retired when the job ended
            assert not set(volumes) & world(sim).volumes  # deleted in CloudStack
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(
                    vm_context_pb2.GetVmContextRequest(id=r.vm_id)
                )
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            exports = await storage_pb2_grpc.NbdExportServiceStub(channel).ListNbdExports(
                storage_pb2.ListNbdExportsRequest()
            )
            assert list(exports.nbd_exports) == []
            listed = await schedules.ListSchedules(schedule_pb2.ListSchedulesRequest())
            assert list(listed.schedules) == []
            counts = await oma.app.db.run(
                lambda: (Volume.select().count(), Disk.select().count(), ReplicationJob.select().count())
            )
            assert counts == (0, 0, 0) and await oma.app.db.run(BlockMap.select().count) == 0
            log = await job_pb2_grpc.JobServiceStub(channel).ListJobLogEntries(
                job_pb2.ListJobLogEntriesRequest(job_id=r.vm_id, page_size=100)
            )
            steps = [(e.step, e.status) for e in log.entries]
            assert steps.count(("delete_volume", job_pb2.JOB_LOG_STATUS_COMPLETED)) == 2
            assert ("delete_vm_context", job_pb2.JOB_LOG_STATUS_COMPLETED) in steps
            assert await refused(channel, r.vm_id) == (grpc.StatusCode.NOT_FOUND, "VM_CONTEXT_NOT_FOUND")
            await r.stream.close()
    finally:
        await oma.stop(grace=0.2)


async def test_delete_refuses_a_vm_with_a_test_vm_and_takes_one_never_replicated(tmp_path: Path) -> None:
    oma = await start_oma(tmp_path)
    sim = sim_of(oma)
    try:
        async with oma_channel(oma) as channel:
            r = await replicate(channel, tmp_path)
            await map_network(channel, sim)
            failover = await start_failover(channel, r.vm_id)
            await wait_job(oma, channel, failover.id)
            vm = await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(
                vm_context_pb2.GetVmContextRequest(id=r.vm_id)
            )
            assert vm.vm_context.status == VM_TEST
            before = world(sim)
            assert await refused(channel, r.vm_id) == (grpc.StatusCode.FAILED_PRECONDITION, "VM_NOT_DELETABLE")
            assert world(sim) == before  # nothing of a refused deletion was done
            await wait_job(oma, channel, (await cleanup(channel, r.vm_id)).id)
            assert len((await delete(channel, r.vm_id)).deleted_volume_ids) == 2

            enrolled = await enroll(channel)
            fresh = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
                vm_context_pb2.RegisterVmContextRequest(
                    appliance_id=enrolled.appliance_id, virtual_machine=inventory(name="never")
                )
            )
            reply = await delete(channel, fresh.vm_context.id)
            assert list(reply.deleted_volume_ids) == []  # nothing was provisioned for it
            await r.stream.close()
    finally:
        await oma.stop(grace=0.2)
