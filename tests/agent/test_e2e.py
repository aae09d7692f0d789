"""The agent against the real in-process OMA and a real nbd-server: initial and incremental replication."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import ChangeIdRecord, Disk, JobDisk, ReplicationJob
from oma_server.server import OmaServer
from tests.agent.helpers import add_exports, make_agent, register_vm, same_bytes, start_job, wait_status
from tests.agent.nbd import NbdServer
from tests.clients import endpoint
from tests.factories import enroll
from vma_client_stubs.agent.agent import Agent, CopyOptions
from vma_client_stubs.agent.extents import allocated_extents, total
from vma_client_stubs.agent.vcenter import FakeVCenter

MIB = 1 << 20


async def test_initial_then_incremental(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    vm = vcenter.create_vm("web01", [24 * MIB, 16 * MIB], seed=7)
    disks = await register_vm(app, enrolled.appliance_id, vm)
    add_exports(nbd_server, disks)
    nbd_server.start()
    agent = Agent(
        oma=endpoint(oma_server),
        appliance_id=enrolled.appliance_id,
        credential=enrolled.credential,
        vcenter=vcenter,
        state_dir=tmp_path / "agent",
        report_interval_s=0.1,
        fsync=False,
    )
    async with agent:
        job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)
        row = await wait_status(app, job.id, {"completed", "failed"})
        assert row.status == "completed", row.error_message
        for disk in disks:
            assert same_bytes(vcenter.disk_path(vm.uuid, disk.key), nbd_server.exports[disk.id])
            change_id, _ = vcenter.current_change_id(vm.uuid, disk.key)
            stored = await app.db.run(Disk.get_by_id, disk.id)
            assert stored.last_change_id == change_id
            records = await app.db.run(lambda d=disk: list(ChangeIdRecord.select().where(ChangeIdRecord.disk == d.id)))
            assert [r.change_id for r in records] == [change_id]
        assert vcenter.list_snapshots(vm.uuid) == []  # removed after the copy

        written = vcenter.guest_write(vm.uuid, 5, seed=3)
        job2 = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server, kind="incremental")
        row = await wait_status(app, job2.id, {"completed", "failed"})
        assert row.status == "completed", row.error_message
        stats = agent.job_stats(job2.id)
        for disk in disks:
            assert same_bytes(vcenter.disk_path(vm.uuid, disk.key), nbd_server.exports[disk.id])
            d = stats["disks"][disk.id]
            assert d["mode"] == "incremental"
            # Exactly the changed bytes were sent: written as data or zeroed (changed blocks that became zero).
            assert d["bytes_written"] + d["bytes_zeroed"] == total(written[disk.key])
            assert 0 < d["bytes_written"] < disk.capacity_bytes // 10
            jd = await app.db.run(lambda d=disk: JobDisk.get((JobDisk.job == job2.id) & (JobDisk.disk == d.id)))
            assert jd.mode == "incremental"
            assert jd.new_change_id == vcenter.current_change_id(vm.uuid, disk.key)[0]
            # the agent said which extents it copied: the OMA's read-back of this sync covers those, and no more
            block_map = await app.db.run(
                lambda d=disk, c=jd.new_change_id: BlockMap.get((BlockMap.disk == d.id) & (BlockMap.change_id == c))
            )
            assert block_map.status == "pending" and block_map.job_id == job2.id
            reported = [(o, n) for o, n in block_map.extents]
            assert total(reported) == total(written[disk.key])
            assert all(any(o <= wo and wo + wn <= o + n for o, n in reported) for wo, wn in written[disk.key])


async def test_invalid_change_id_and_resize_fall_back_to_full_copy(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    vm = vcenter.create_vm("app02", [8 * MIB, 8 * MIB], seed=8)
    disks = await register_vm(app, enrolled.appliance_id, vm)
    add_exports(nbd_server, disks)
    # The second disk's volume is already big enough for its later growth.
    os.truncate(nbd_server.exports[disks[1].id], 12 * MIB)
    nbd_server.start()
    async with make_agent(oma_server, enrolled, vcenter, tmp_path / "agent") as agent:
        job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)
        assert (await wait_status(app, job.id, {"completed", "failed"})).status == "completed"
        vcenter.reset_cbt(vm.uuid, 2000)  # every earlier change id of disk 2000 is now invalid
        vcenter.resize_disk(vm.uuid, 2001, 12 * MIB)
        vcenter.write(vm.uuid, 2001, 10 * MIB, b"grown" * 1000)
        vcenter.guest_write(vm.uuid, 3, seed=5)
        job2 = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server, kind="incremental")
        row = await wait_status(app, job2.id, {"completed", "failed"})
        assert row.status == "completed", row.error_message
        stats = agent.job_stats(job2.id)["disks"]
    assert stats[disks[0].id]["mode"] == "full" and "change id invalid" in stats[disks[0].id]["full_copy_reason"]
    assert stats[disks[1].id]["mode"] == "full" and "resized" in stats[disks[1].id]["full_copy_reason"]
    for disk in disks:
        assert same_bytes(vcenter.disk_path(vm.uuid, disk.key), nbd_server.exports[disk.id])
        jd = await app.db.run(lambda d=disk: JobDisk.get((JobDisk.job == job2.id) & (JobDisk.disk == d.id)))
        assert jd.mode == "full" and jd.new_change_id == vcenter.current_change_id(vm.uuid, disk.key)[0]


async def test_cancel_stops_the_copy(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    # ~40 MiB of data at 2 MiB/s: the copy has ~20 s left when the cancel is sent after its first 2 MiB, far more
    # than a loaded machine needs to deliver the cancel (at 32 MiB and 4 MiB/s, a loaded CI run once finished first)
    vm = vcenter.create_vm("slow", [64 * MIB], seed=9)
    disks = await register_vm(app, enrolled.appliance_id, vm)
    add_exports(nbd_server, disks)
    nbd_server.start()
    opts = CopyOptions(max_bytes_per_second=2 * MIB)
    async with make_agent(oma_server, enrolled, vcenter, tmp_path / "agent", copy=opts) as agent:
        job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)
        await wait_status(app, job.id, {"replicating"}, min_bytes=2 * MIB)
        await app.replication.cancel(job.id)
        row = await wait_status(app, job.id, {"cancelled", "completed", "failed"}, timeout=10)
        assert row.status == "cancelled"
        record = await agent.wait_job(job.id, timeout=5)
        assert record.status == "cancelled"
        assert 0 < record.bytes_written < total(allocated_extents(vcenter.disk_path(vm.uuid, 2000)))
    assert vcenter.list_snapshots(vm.uuid) == []


async def test_disks_of_a_job_copy_in_parallel_within_the_bounds(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    vms = [vcenter.create_vm(f"par{i}", [8 * MIB, 8 * MIB, 8 * MIB], seed=20 + i) for i in range(2)]
    disks = {vm.uuid: await register_vm(app, enrolled.appliance_id, vm) for vm in vms}
    for vm_disks in disks.values():
        add_exports(nbd_server, vm_disks)
    nbd_server.start()
    # Three disks per job, two jobs at once; at most 2 disks of a job and 3 copies of the appliance at once.
    agent = make_agent(oma_server, enrolled, vcenter, tmp_path / "agent", copy=CopyOptions(disks_per_job=2,
                       copies_per_appliance=3, connections=2))  # fmt: skip
    async with agent:
        jobs = [await start_job(app, enrolled.appliance_id, vm, disks[vm.uuid], nbd_server) for vm in vms]
        for job in jobs:
            row = await wait_status(app, job.id, {"completed", "failed"})
            assert row.status == "completed", row.error_message
        for vm in vms:
            for disk in disks[vm.uuid]:
                assert same_bytes(vcenter.disk_path(vm.uuid, disk.key), nbd_server.exports[disk.id])
        # Whichever job reaches its copy first starts two disks at once (three appliance slots are free); the other
        # may get only the one slot left while the first holds two (it did under load): for it only the bound holds.
        peaks = sorted(agent.job_stats(job.id)["peak_parallel_disks"] for job in jobs)
        assert peaks[-1] == 2 and peaks[0] >= 1, peaks  # parallel, and never above the job's bound
        for job in jobs:
            stats = agent.job_stats(job.id)
            row = await app.db.run(ReplicationJob.get_by_id, job.id)
            assert row.bytes_done == row.bytes_total == sum(d["bytes_total"] for d in stats["disks"].values())
            for disk_id, d in stats["disks"].items():  # progress stays exact per disk
                jd = await app.db.run(lambda i=disk_id, j=job.id: JobDisk.get((JobDisk.job == j) & (JobDisk.disk == i)))
                assert jd.bytes_done == jd.bytes_total == d["bytes_total"]
        assert 2 <= agent.peak_copies <= 3  # the appliance's bound held across both jobs


async def test_a_failing_disk_stops_its_siblings_and_fails_the_job(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    vm = vcenter.create_vm("halfbad", [16 * MIB, 16 * MIB], seed=9)
    disks = await register_vm(app, enrolled.appliance_id, vm)
    add_exports(nbd_server, disks)
    os.truncate(nbd_server.exports[disks[0].id], 4 * MIB)  # the first target is too small: that disk fails
    nbd_server.start()
    agent = make_agent(oma_server, enrolled, vcenter, tmp_path / "agent", copy=CopyOptions(disks_per_job=2))
    async with agent:
        job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)
        row = await wait_status(app, job.id, {"completed", "failed"})
        assert row.status == "failed"
        assert disks[0].id in row.error_message and row.error_class == "target_write_failed"
        await agent.wait_job(job.id, timeout=10)
        assert agent.records[job.id].status == "failed"
        assert not agent.jobs[job.id].copying  # no copy of the job is left running
