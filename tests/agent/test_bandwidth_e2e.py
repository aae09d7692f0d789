"""Bandwidth limits end to end: set through the OMA's API, sent over the stream, applied by the real agent's copier
against a real nbd-server. Rates are only bounded from below (a limited copy cannot be faster than its limit
allows), so a slow machine cannot fail the test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from oma.v1 import bandwidth_pb2, bandwidth_pb2_grpc
from oma_server.server import OmaServer
from tests.agent.helpers import add_exports, make_agent, register_vm, same_bytes, start_job, wait_status
from tests.agent.nbd import NbdServer
from tests.factories import enroll
from vma_client_stubs.agent.agent import Agent
from vma_client_stubs.agent.copier import DEFAULT_CHUNK
from vma_client_stubs.agent.extents import allocated_extents, total
from vma_client_stubs.agent.rate_limit import BURST_S
from vma_client_stubs.agent.vcenter import FakeVCenter

MIB = 1 << 20
APPLIANCE = bandwidth_pb2.BANDWIDTH_TARGET_KIND_APPLIANCE


def limit(appliance_id: str, rate: int) -> bandwidth_pb2.SetBandwidthLimitRequest:
    target = bandwidth_pb2.BandwidthTarget(kind=APPLIANCE, id=appliance_id)
    return bandwidth_pb2.SetBandwidthLimitRequest(
        spec=bandwidth_pb2.BandwidthLimitSpec(target=target, bytes_per_second=rate)
    )


async def applied(agent: Agent, rate: float, timeout: float = 10.0) -> float:
    """Seconds until the agent's appliance bucket runs at `rate`."""
    started = time.monotonic()
    while agent.bandwidth.appliance.rate != rate:
        assert time.monotonic() - started < timeout, f"agent rates {agent.bandwidth.rates()}, wanted {rate}"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_an_appliance_limit_set_through_the_api_paces_the_agents_copy(
    oma_server: OmaServer, channel: grpc.aio.Channel, nbd_server: NbdServer, vcenter: FakeVCenter, tmp_path: Path
) -> None:
    app = oma_server.app
    limits = bandwidth_pb2_grpc.BandwidthServiceStub(channel)
    enrolled = await enroll(channel)
    vm = vcenter.create_vm("paced", [12 * MIB], seed=11)
    data = total(allocated_extents(vcenter.disk_path(vm.uuid, 2000)))
    disks = await register_vm(app, enrolled.appliance_id, vm)
    add_exports(nbd_server, disks)
    nbd_server.start()
    rate = 4 * MIB
    # set before the agent connects: its session is sent the set at once
    await limits.SetBandwidthLimit(limit(enrolled.appliance_id, rate))
    async with make_agent(oma_server, enrolled, vcenter, tmp_path / "agent") as agent:
        await applied(agent, rate)
        started = time.monotonic()
        job = await start_job(app, enrolled.appliance_id, vm, disks, nbd_server)
        row = await wait_status(app, job.id, {"completed", "failed"}, timeout=60)
        took = time.monotonic() - started
        assert row.status == "completed", row.error_message
        assert same_bytes(vcenter.disk_path(vm.uuid, 2000), nbd_server.exports[disks[0].id])
        # only data writes count (zeros cost nothing); the bucket runs in debt (one write passes ahead of its
        # tokens) and saves at most BURST_S of its rate: the copy cannot beat written/rate by more than that
        written = agent.job_stats(job.id)["disks"][disks[0].id]["bytes_written"]
        assert written >= 6 * MIB and data >= written
        ahead = DEFAULT_CHUNK + BURST_S * rate
        assert took >= (written - ahead) / rate * 0.98, (took, written)

        # changed live: deleted, the agent copies unlimited again
        [stored] = (await limits.ListBandwidthLimits(bandwidth_pb2.ListBandwidthLimitsRequest())).limits
        await limits.DeleteBandwidthLimit(bandwidth_pb2.DeleteBandwidthLimitRequest(id=stored.id))
        await applied(agent, 0.0)
        await limits.SetBandwidthLimit(limit(enrolled.appliance_id, 50 * MIB))
        await applied(agent, 50 * MIB)
