"""A copy whose NBD export goes away mid-copy: the agent reconnects — to the same address when the server comes back,
to a new one when the OMA names it (`ReplicationService.retarget`) — and resumes from its acknowledged point; a
target gone for longer than `target_wait_s` fails the job. Real nbdkit, the real in-process OMA."""

from __future__ import annotations

from pathlib import Path

import grpc

from oma_server.db.models import Disk, JobDisk
from oma_server.server import OmaServer
from tests.agent.helpers import add_exports, make_agent, register_vm, same_bytes, start_job, wait_status
from tests.agent.nbd import NbdServer
from tests.factories import Enrolled, enroll
from tests.waiting import until
from vma_client_stubs.agent.agent import CopyOptions
from vma_client_stubs.agent.copier import ResumePoint
from vma_client_stubs.agent.vcenter import FakeVCenter, VirtualMachine

MIB = 1 << 20
SLOW = CopyOptions(max_bytes_per_second=6 * MIB, disks_per_job=2)  # ~5 s of copying: a cut lands mid-copy


async def acked(oma_server: OmaServer, job_id: str) -> int:
    """Bytes before the resume points the OMA durably stored, over the job's disks."""
    rows = await oma_server.app.db.run(lambda: list(JobDisk.select().where(JobDisk.job == job_id)))
    return sum(ResumePoint.decode(r.resume_token).done for r in rows if r.resume_token)


def same_files(workdir: Path, first: NbdServer) -> NbdServer:
    """Another nbdkit, on another port, serving the same replica files under the same names."""
    other = NbdServer(workdir)
    for name, path in first.exports.items():
        (other.exports_dir / name).symlink_to(path)
        other.exports[name] = path
    return other


async def cut_mid_copy(oma_server: OmaServer, job_id: str, nbd: NbdServer) -> None:
    """Stop nbdkit (its connections reset) once the OMA has acknowledged part of the copy, and not all of it."""
    await until(lambda: _acked_some(oma_server, job_id), "the OMA acknowledges part of the copy", timeout=30)
    nbd.stop()
    row = await wait_status(oma_server.app, job_id, {"replicating"})
    assert row.bytes_done < row.bytes_total, "the copy ended before the cut: nothing was tested"


async def _acked_some(oma_server: OmaServer, job_id: str) -> bool:
    return await acked(oma_server, job_id) >= 4 * MIB


async def exported_vm(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd: NbdServer, vcenter: FakeVCenter, name: str, seed: int
) -> tuple[Enrolled, VirtualMachine, list[Disk]]:
    """An enrolled appliance and a VM of two 16 MiB disks registered, their exports served by `nbd`."""
    enrolled = await enroll(channel)
    vm = vcenter.create_vm(name, [16 * MIB, 16 * MIB], seed=seed)
    disks = await register_vm(oma_server.app, enrolled.appliance_id, vm)
    add_exports(nbd, disks)
    nbd.start()
    return enrolled, vm, disks


async def test_a_restarted_nbd_server_is_reconnected_and_the_copy_resumes(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    enrolled, vm, disks = await exported_vm(oma_server, channel, nbd_server, vcenter, "cut", 21)
    async with make_agent(oma_server, enrolled, vcenter, tmp_path / "agent", copy=SLOW) as agent:
        job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)
        await cut_mid_copy(oma_server, job.id, nbd_server)
        nbd_server.start()  # the same port again, as the OMA's supervisor restarts its nbdkit
        row = await wait_status(app, job.id, {"completed", "failed"}, timeout=60)
        assert row.status == "completed", row.error_message
        assert agent.records[job.id].runs == 1  # one run of the job: the disks reconnected inside it
    for disk in disks:
        assert same_bytes(vcenter.disk_path(vm.uuid, disk.key), nbd_server.exports[disk.id])


async def test_a_copy_moves_to_the_address_the_oma_names(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    enrolled, vm, disks = await exported_vm(oma_server, channel, nbd_server, vcenter, "moved", 22)
    elsewhere = same_files(tmp_path / "elsewhere", nbd_server)
    async with make_agent(oma_server, enrolled, vcenter, tmp_path / "agent", copy=SLOW) as agent:
        job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)
        await cut_mid_copy(oma_server, job.id, nbd_server)  # for good: the old address never answers again
        elsewhere.start()
        try:
            # The disks still copying move (one may have completed before the cut: the command names only the rest).
            copying = await app.db.run(lambda: [r.disk_id for r in JobDisk.select() if not r.completed])
            assert copying, "every disk had completed before the cut: nothing was tested"
            uris = {disk_id: elsewhere.uri(disk_id) for disk_id in copying}
            stored = await app.db.run(lambda: {d.id: Disk.get_by_id(d.id).capacity_bytes for d in disks})
            await app.replication.retarget(job.id, uris, vm.uuid, stored)
            row = await wait_status(app, job.id, {"completed", "failed"}, timeout=60)
            assert row.status == "completed", row.error_message
            assert agent.records[job.id].runs == 1
            targets = {t.disk_id: t.nbd_uri for t in agent.records[job.id].command.disks}
            assert {d: targets[d] for d in copying} == uris
            recorded = await app.db.run(lambda: {r.disk_id: r.nbd_uri for r in JobDisk.select()})
            assert {d: recorded[d] for d in copying} == uris
        finally:
            elsewhere.stop()
    for disk in disks:
        assert same_bytes(vcenter.disk_path(vm.uuid, disk.key), nbd_server.exports[disk.id])


async def test_a_target_gone_for_longer_than_the_wait_fails_the_job(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    enrolled, vm, disks = await exported_vm(oma_server, channel, nbd_server, vcenter, "gone", 23)
    options = CopyOptions(max_bytes_per_second=6 * MIB, disks_per_job=2, target_wait_s=1.0)
    async with make_agent(oma_server, enrolled, vcenter, tmp_path / "agent", copy=options) as agent:
        job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)
        await cut_mid_copy(oma_server, job.id, nbd_server)
        row = await wait_status(app, job.id, {"completed", "failed"}, timeout=30)
        assert row.status == "failed" and row.error_class == "target_unreachable", (row.status, row.error_message)
        await agent.wait_job(job.id, timeout=10)
        assert not agent.jobs[job.id].copying
