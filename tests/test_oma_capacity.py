"""The OMA VM's data-volume slots, through the real server: CloudStack simulator over HTTP, real nbd-server, nbdcopy.

Replicas are attached only while a job writes them; a job that finds the OMA VM full waits, and says so; the limit
comes from the cloud (hypervisor capabilities, or CloudStack's own refusal of an attach); disks the cloud cannot
hold are refused before anything is created; a crash that left replicas attached is repaired at the next start.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from oma.v1 import (
    failover_pb2,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.app import App
from oma_server.server import OmaServer
from oma_server.storage.attachments import SlotPool
from oma_server.storage.volumes import VOLUME_NAME_PREFIX
from tests.clients import oma_channel
from tests.conftest import make_settings
from tests.factories import Enrolled, RawStream, enroll, inventory, live_exports
from tests.failover.helpers import play_replication, replicas_released, restart_oma
from vma_client_stubs.errors import error_info_of

pytestmark = pytest.mark.nbd
PROVISIONING = replication_pb2.REPLICATION_JOB_STATUS_PROVISIONING
COMPLETED = replication_pb2.REPLICATION_JOB_STATUS_COMPLETED


def limit_seed(limit: int, **extra: Any) -> dict[str, Any]:
    return {
        "hypervisor_capabilities": [
            {"hypervisor": "KVM", "hypervisorversion": "default", "maxdatavolumeslimit": limit}
        ],
        **extra,
    }


async def start_oma(tmp_path: Path, seed: dict[str, Any]) -> OmaServer:
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(seed))
    server = OmaServer(App(make_settings(tmp_path, cloudstack_sim_seed=seed_file)))
    await server.start()
    return server


@pytest.fixture
async def oma_factory(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[OmaServer]]]:
    started: list[OmaServer] = []

    async def make(seed: dict[str, Any]) -> OmaServer:
        server = await start_oma(tmp_path, seed)
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop(grace=0.2)


async def register(channel: grpc.aio.Channel, enrolled: Enrolled, **kw: Any) -> str:
    reply = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
        vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance_id, virtual_machine=inventory(**kw))
    )
    return reply.vm_context.id


async def start(channel: grpc.aio.Channel, vm_id: str) -> replication_pb2.ReplicationJob:
    stub = replication_pb2_grpc.ReplicationServiceStub(channel)
    return (await stub.StartReplication(replication_pb2.StartReplicationRequest(vm_context_id=vm_id))).job


async def get_job(channel: grpc.aio.Channel, job_id: str) -> replication_pb2.ReplicationJob:
    stub = replication_pb2_grpc.ReplicationServiceStub(channel)
    return (await stub.GetReplicationJob(replication_pb2.GetReplicationJobRequest(id=job_id))).job


async def job_until(
    channel: grpc.aio.Channel, job_id: str, ok: Callable[[replication_pb2.ReplicationJob], bool], timeout: float = 20
) -> replication_pb2.ReplicationJob:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        job = await get_job(channel, job_id)
        if ok(job):
            return job
        assert loop.time() < deadline, f"job {job_id} stayed {job.status} ({job.current_operation})"
        await asyncio.sleep(0.02)


async def log_of(channel: grpc.aio.Channel, job_id: str) -> list[job_pb2.JobLogEntry]:
    stub = job_pb2_grpc.JobServiceStub(channel)
    return list((await stub.ListJobLogEntries(job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=1000))).entries)


def on_oma(server: OmaServer) -> set[str]:
    sim = server.app.simulator
    assert sim is not None
    return {
        v["id"]
        for v in sim.state.volumes.values()
        if v.get("virtualmachineid") == sim.oma_vm_id and v["name"].startswith(VOLUME_NAME_PREFIX)
    }


async def test_a_full_oma_vm_queues_the_next_job_and_says_where_it_stands(
    oma_factory: Callable[[dict[str, Any]], Awaitable[OmaServer]], tmp_path: Path
) -> None:
    oma = await oma_factory(limit_seed(2))
    app = oma.app
    assert app.attachments is not None and app.attachments.pool.capacity == 2
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vm_a = await register(channel, enrolled, disk_mib=(2, 1), name="vm-a")
        vm_b = await register(channel, enrolled, disk_mib=(2, 1), name="vm-b")
        job_a = await start(channel, vm_a)
        job_b = await start(channel, vm_b)
        waiting = await job_until(channel, job_b.id, lambda j: j.current_operation.startswith("Waiting"))
        assert waiting.status == PROVISIONING
        assert waiting.current_operation == (
            "Waiting for 2 free data-volume slot(s) on the OMA VM (2 of 2 in use, 0 job(s) ahead)"
        )
        assert any(
            e.step == "queue" and e.message == waiting.current_operation for e in await log_of(channel, job_b.id)
        )
        stream = RawStream(channel)
        await stream.hello(enrolled)
        first, _ = await play_replication(stream, tmp_path, "a", {})
        assert first == job_a.id
        # job A's replicas leave the OMA VM and its slots go to job B
        second, _ = await play_replication(stream, tmp_path, "b", {})
        assert second == job_b.id
        for job in (job_a, job_b):
            assert (await get_job(channel, job.id)).status == COMPLETED
            await app.workflow.settled(job.id)  # type: ignore[union-attr]
        entries = await log_of(channel, job_b.id)
        assert any(e.step == "queue" and e.message.startswith("2 data-volume slot(s) free after") for e in entries)
        assert app.attachments.pool.peak == 2 and app.attachments.pool.in_use == 0
        assert on_oma(oma) == set() and live_exports(app) == []
        await stream.close()


async def test_the_limit_is_learnt_from_cloudstacks_refusal(
    oma_factory: Callable[[dict[str, Any]], Awaitable[OmaServer]], tmp_path: Path
) -> None:
    """An account that may not read hypervisor capabilities: CloudStack's refusal of an attach names the limit, the
    refused job goes back to the queue instead of failing."""
    oma = await oma_factory(limit_seed(2, roletype="User"))
    app = oma.app
    assert app.attachments is not None and app.attachments.pool.capacity is None
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vms = [await register(channel, enrolled, disk_mib=(2, 1), name=f"vm-{i}") for i in range(2)]
        jobs = [await start(channel, vm) for vm in vms]
        stream = RawStream(channel)
        await stream.hello(enrolled)
        done = {(await play_replication(stream, tmp_path, str(n), {}))[0] for n in range(2)}
        assert done == {j.id for j in jobs}
        assert app.attachments.pool.capacity == 2  # learnt
        assert "refusal of an attach" in app.attachments.pool.capacity_note
        requeued = [e for j in jobs for e in await log_of(channel, j.id) if "back in the queue" in e.message]
        assert requeued and "maximum number of data disks (2)" in requeued[0].message
        for job in jobs:
            assert (await get_job(channel, job.id)).status == COMPLETED
        await stream.close()


async def test_start_replication_refuses_what_the_cloud_cannot_hold(
    oma_factory: Callable[[dict[str, Any]], Awaitable[OmaServer]],
) -> None:
    oma = await oma_factory(limit_seed(2, configurations={"custom.diskoffering.size.max": "1"}))
    sim = oma.app.simulator
    assert sim is not None
    volumes_before = set(sim.state.volumes)
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        big = await register(channel, enrolled, disk_mib=(1536,), name="big")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await start(channel, big)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info_of(err.value)
        assert info is not None and info.reason == "DISK_TOO_LARGE"
        assert "custom.diskoffering.size.max is 1 GB" in (err.value.details() or "")
        assert "updateConfiguration name=custom.diskoffering.size.max value=2" in (err.value.details() or "")

        wide = await register(channel, enrolled, disk_mib=(1, 1, 1), name="wide")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await start(channel, wide)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info_of(err.value).reason == "OMA_CAPACITY_TOO_SMALL"  # type: ignore[union-attr]
        assert "holds at most 2 replicas" in (err.value.details() or "")

        # nothing was created: no job, no volume
        listed = await replication_pb2_grpc.ReplicationServiceStub(channel).ListReplicationJobs(
            replication_pb2.ListReplicationJobsRequest()
        )
        assert list(listed.jobs) == [] and set(sim.state.volumes) == volumes_before

        # preflight says the same, with what to change
        ready = await oma_failover(channel).CheckFailoverReadiness(
            failover_pb2.CheckFailoverReadinessRequest(vm_context_id=big, kind=failover_pb2.FAILOVER_JOB_KIND_TEST)
        )
        (sizes,) = [c for c in ready.checks if c.name == "disk_sizes"]
        assert not sizes.passed and "disk 2000: it needs a 2 GB volume" in sizes.reason


def oma_failover(channel: grpc.aio.Channel) -> Any:
    from oma.v1 import failover_pb2_grpc

    return failover_pb2_grpc.FailoverServiceStub(channel)


async def test_cancel_while_queued_frees_the_place(
    oma_factory: Callable[[dict[str, Any]], Awaitable[OmaServer]], tmp_path: Path
) -> None:
    oma = await oma_factory(limit_seed(2))
    app = oma.app
    assert app.attachments is not None
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vm_a = await register(channel, enrolled, disk_mib=(2, 1), name="vm-a")
        vm_b = await register(channel, enrolled, disk_mib=(2, 1), name="vm-b")
        await start(channel, vm_a)
        job_b = await start(channel, vm_b)
        await job_until(channel, job_b.id, lambda j: j.current_operation.startswith("Waiting"))
        await replication_pb2_grpc.ReplicationServiceStub(channel).CancelReplicationJob(
            replication_pb2.CancelReplicationJobRequest(id=job_b.id)
        )
        await app.workflow.settled(job_b.id)  # type: ignore[union-attr]
        assert (await get_job(channel, job_b.id)).status == replication_pb2.REPLICATION_JOB_STATUS_CANCELLED
        assert app.attachments.pool.waiting() == [] and app.attachments.pool.in_use == 2  # job A's
        vm = (
            await vm_context_pb2_grpc.VmContextServiceStub(channel).GetVmContext(
                vm_context_pb2.GetVmContextRequest(id=vm_b)
            )
        ).vm_context
        assert all(not d.volume_id for d in vm.disks)  # never provisioned
        stream = RawStream(channel)
        await stream.hello(enrolled)
        await play_replication(stream, tmp_path, "a", {})
        await stream.close()


async def test_replicas_left_attached_by_a_failed_release_are_taken_off_at_the_next_start(
    oma_factory: Callable[[dict[str, Any]], Awaitable[OmaServer]], tmp_path: Path
) -> None:
    oma = await oma_factory(limit_seed(4))
    sim = oma.app.simulator
    assert sim is not None and oma.app.attachments is not None
    async with oma_channel(oma) as channel:
        enrolled = await enroll(channel)
        vm = await register(channel, enrolled, disk_mib=(2, 1))
        job = await start(channel, vm)
        stream = RawStream(channel)
        await stream.hello(enrolled)
        sim.faults.fail_command("detachVolume", errortext="Failed to detach volume: host unreachable", times=2)
        await play_replication(stream, tmp_path, "1", {})
        await oma.app.workflow.settled(job.id)  # type: ignore[union-attr]
        failed = [e for e in await log_of(channel, job.id) if e.step == "release_volumes"]
        assert failed and failed[-1].status == job_pb2.JOB_LOG_STATUS_FAILED
        assert "keep their slots until the OMA's next start" in failed[-1].message
        assert len(on_oma(oma)) == 2 and oma.app.attachments.pool.in_use == 2  # held, not reused
        await stream.close()
    oma = await restart_oma(oma)
    async with oma_channel(oma) as channel:
        assert on_oma(oma) == set() and live_exports(oma.app) == []
        await replicas_released(channel, vm)
        assert oma.app.attachments is not None and oma.app.attachments.pool.in_use == 0
        volumes = (
            await storage_pb2_grpc.VolumeServiceStub(channel).ListVolumes(
                storage_pb2.ListVolumesRequest(vm_context_id=vm)
            )
        ).volumes
        assert len(volumes) == 2 and all(not v.device_path for v in volumes)
    await oma.stop(grace=0.2)


# ---- the pool itself ----------------------------------------------------------------------------------------------
async def test_pool_order_priority_and_capacity_changes() -> None:
    pool = SlotPool(4)
    seen: dict[str, list[str]] = {}
    told: dict[str, asyncio.Event] = {}

    def watcher(job: str) -> Callable[[Any], Awaitable[None]]:
        told[job] = asyncio.Event()

        async def on_wait(place: Any) -> None:
            seen.setdefault(job, []).append(place.describe())
            told[job].set()

        return on_wait

    assert not await pool.acquire("a", 3, on_wait=watcher("a"))
    waiters = {
        job: asyncio.create_task(pool.acquire(job, n, priority=p, on_wait=watcher(job)))
        for job, n, p in (("b", 2, 1), ("c", 1, 1), ("final", 2, 0))
    }
    await asyncio.wait_for(asyncio.gather(*(told[j].wait() for j in waiters)), 5)  # each queued, told its place
    assert pool.waiting() == ["final", "b", "c"]
    assert seen["final"] == ["Waiting for 2 free data-volume slot(s) on the OMA VM (3 of 4 in use, 0 job(s) ahead)"]
    # c would fit (1 free) but waits its turn: first come first served, the final sync first of all
    assert not waiters["c"].done()
    pool.release("a")
    assert await waiters["final"] and pool.held_by("final") == 2
    assert await waiters["b"] and pool.in_use == 4
    pool.set_capacity(2, "shrunk")
    pool.release("b")
    with pytest.raises(Exception) as err:
        await pool.acquire("too-big", 3, on_wait=watcher("x"))
    assert getattr(err.value, "reason", "") == "OMA_CAPACITY_TOO_SMALL"
    pool.release("final")
    assert await waiters["c"] and pool.peak == 4
    # a cancelled waiter leaves the queue
    pool.hold("x", 2)
    blocked = asyncio.create_task(pool.acquire("d", 1, on_wait=watcher("d")))
    await asyncio.wait_for(told["d"].wait(), 5)
    assert pool.waiting() == ["d"]
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert pool.waiting() == []


async def test_a_cloudstack_url_without_the_oma_vm_id_still_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The capacity is read at start; without OMA_CLOUDSTACK_OMA_VM_ID it stays unknown instead of stopping the OMA
    (provisioning says what to set)."""
    from oma_server.cloudstack.simulator import CloudStackSimulator

    async with CloudStackSimulator(tmp_path / "cs") as sim:
        monkeypatch.setenv("OMA_CLOUDSTACK_API_KEY", sim.api_key)
        monkeypatch.setenv("OMA_CLOUDSTACK_SECRET_KEY", sim.secret_key)
        server = OmaServer(App(make_settings(tmp_path, cloudstack=sim.url)))
        await server.start()
        try:
            assert server.app.attachments is not None and server.app.attachments.pool.capacity is None
        finally:
            await server.stop(grace=0.2)
