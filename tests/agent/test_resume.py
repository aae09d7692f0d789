"""Crash safety: the agent process killed mid-disk, restarted, resumes from what the OMA acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from oma_server.db.models import JobDisk
from oma_server.server import OmaServer
from tests.agent.helpers import add_exports, make_agent, register_vm, same_bytes, start_job, wait_status
from tests.agent.nbd import NbdServer
from tests.clients import ca_file
from tests.factories import enroll
from tests.waiting import until
from vma_client_stubs.agent.agent import snapshot_description
from vma_client_stubs.agent.copier import ResumePoint
from vma_client_stubs.agent.vcenter import FakeVCenter

MIB = 1 << 20


def agent_process(
    oma: OmaServer, appliance_id: str, credential: str, vcenter: Path, state: Path, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, VMA_CREDENTIAL=credential)
    cmd = [sys.executable, "-m", "vma_client_stubs.agent.cli", "run", "--oma", f"127.0.0.1:{oma.port}"]
    cmd += ["--ca", str(ca_file(oma.app.settings.data_dir))]
    cmd += ["--appliance-id", appliance_id, "--vcenter-dir", str(vcenter), "--state-dir", str(state), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log.open("wb"))


async def acked_done(oma_server: OmaServer, job_id: str, disk_id: str) -> int:
    """Bytes of the disk's plan before the resume point the OMA durably stored (0 when none)."""
    jd = await oma_server.app.db.run(lambda: JobDisk.get((JobDisk.job == job_id) & (JobDisk.disk == disk_id)))
    return ResumePoint.decode(jd.resume_token).done if jd.resume_token else 0


async def disk_completed(oma_server: OmaServer, job_id: str, disk_id: str) -> bool:
    jd = await oma_server.app.db.run(lambda: JobDisk.get((JobDisk.job == job_id) & (JobDisk.disk == disk_id)))
    return bool(jd.completed)


async def test_killed_agent_resumes_from_the_acknowledged_point(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    enrolled = await enroll(channel)
    # The big disk holds 12 s of the killed agent's 12 MiB/s (its disks share it): a loaded machine that looks late
    # still kills it mid-copy (the restarted in-process agent copies the rest unlimited).
    vm = vcenter.create_vm("db01", [8 * MIB, 144 * MIB], seed=11)
    disks = await register_vm(app, enrolled.appliance_id, vm)
    add_exports(nbd_server, disks)
    nbd_server.start()
    state = tmp_path / "agent-state"
    log = tmp_path / "agent.log"
    proc = agent_process(
        oma_server, enrolled.appliance_id, enrolled.credential, vcenter.root, state, log,
        "--max-rate-mib", "12", "--report-interval", "0.1",
    )  # fmt: skip
    try:
        job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)
        big = disks[1]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        # Disks copy in parallel: wait until the OMA recorded the first (small) disk completed and acknowledged
        # part of the second (big) one, then kill the agent hard.
        while not (
            await disk_completed(oma_server, job.id, disks[0].id)
            and await acked_done(oma_server, job.id, big.id) >= 6 * MIB
        ):
            assert proc.poll() is None, log.read_text()
            assert loop.time() < deadline, "the OMA never acknowledged progress on the big disk"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    # Its stream ends once the OMA has read (and applied) everything the dead agent sent; then make it durable.
    await until(lambda: not app.hub.connected(enrolled.appliance_id), "the OMA to see the killed agent's stream end")
    await app.jobs.flush()
    acknowledged = await acked_done(oma_server, job.id, big.id)
    row = await wait_status(app, job.id, {"replicating"})
    assert acknowledged >= 6 * MIB

    async with make_agent(oma_server, enrolled, vcenter, state) as agent:
        row = await wait_status(app, job.id, {"completed", "failed"})
        assert row.status == "completed", row.error_message
        stats = agent.job_stats(job.id)
    big_stats = stats["disks"][big.id]
    assert stats["runs"] == 2
    # The restarted copy began exactly where the OMA's durable record says, not from zero ...
    assert big_stats["resume_from"] == acknowledged
    # ... so it wrote at most the rest of the plan; nothing acknowledged was written again.
    assert big_stats["bytes_written_this_run"] <= big_stats["bytes_total"] - acknowledged
    assert stats["disks"][disks[0].id]["bytes_written_this_run"] == 0  # the first disk had completed
    for disk in disks:
        assert same_bytes(vcenter.disk_path(vm.uuid, disk.key), nbd_server.exports[disk.id])
    assert vcenter.list_snapshots(vm.uuid) == []


async def test_a_snapshot_taken_but_not_recorded_before_a_crash_is_removed(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    """An agent killed between taking a job's VMware snapshot and recording it left that snapshot behind: the run
    that takes the job over removes it (found by the job's snapshot description) instead of leaking it on the source.
    Found by the workflow kill harness (tests/harness/workflow_kills.py, seed 3)."""
    app = oma_server.app
    enrolled = await enroll(channel)
    vm = vcenter.create_vm("files01", [4 * MIB, 2 * MIB], seed=5)
    disks = await register_vm(app, enrolled.appliance_id, vm)
    add_exports(nbd_server, disks)
    nbd_server.start()
    job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)  # queued: no agent runs yet
    leftover = vcenter.create_snapshot(vm.uuid, snapshot_description(job.id))  # what the killed agent took
    unrelated = vcenter.create_snapshot(vm.uuid, "an operator's own snapshot")
    async with make_agent(oma_server, enrolled, vcenter, tmp_path / "agent"):
        row = await wait_status(app, job.id, {"completed", "failed"})
        assert row.status == "completed", row.error_message
    assert leftover.id not in vcenter.list_snapshots(vm.uuid)
    assert vcenter.list_snapshots(vm.uuid) == [unrelated.id]
    for disk in disks:
        assert same_bytes(vcenter.disk_path(vm.uuid, disk.key), nbd_server.exports[disk.id])
