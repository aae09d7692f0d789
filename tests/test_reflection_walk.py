"""Every RPC the server lists by reflection, called with empty, undecodable, boundary and random requests.

No call may answer INTERNAL or UNKNOWN (a VMA's Connect must answer UNAUTHENTICATED or INVALID_ARGUMENT to whatever
first message it gets), no unary call may hang to its deadline, and the server must still be SERVING afterwards.
Runs on SQLite and on the real PostgreSQL (where column sizes, NUL characters and integer ranges are enforced).

`OMA_WALK_CALLS` sets the calls per database (default 600), `OMA_WALK_SEED` the seed (default 11; a failure prints
it with the request): `OMA_WALK_CALLS=5000 .venv/bin/pytest -s tests/test_reflection_walk.py`.
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oma.common.v1 import inventory_pb2
from oma.v1 import appliance_pb2, appliance_pb2_grpc, vm_context_pb2, vm_context_pb2_grpc
from oma_server.server import SERVICE_NAMES, OmaServer
from tests.clients import endpoint
from tests.reflection_walk import Walk, summary

CALLS = int(os.environ.get("OMA_WALK_CALLS", "600"))
SEED = int(os.environ.get("OMA_WALK_SEED", "11"))
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
CONNECT = "oma.v1.VmaGatewayService.Connect"


async def _seed_real_ids(channel: grpc.aio.Channel) -> list[str]:
    """An appliance and a VM context, so that random requests also name things that exist."""
    enrolled = await appliance_pb2_grpc.ApplianceServiceStub(channel).EnrollAppliance(
        appliance_pb2.EnrollApplianceRequest(name="walk-vma")
    )
    vm = inventory_pb2.VirtualMachine(vcenter="vc.walk", uuid="4200-walk", moref="vm-1", name="walk-vm", num_cpus=2)
    vm.memory_mib = 2048
    vm.disks.add(key=2000, label="Hard disk 1", capacity_bytes=64 * 2**20, unit_number=0)
    vm.nics.add(label="Network adapter 1", network_name="VM Network", mac_address="00:50:56:00:00:01")
    registered = await vm_context_pb2_grpc.VmContextServiceStub(channel).RegisterVmContext(
        vm_context_pb2.RegisterVmContextRequest(appliance_id=enrolled.appliance.id, virtual_machine=vm)
    )
    return [enrolled.appliance.id, registered.vm_context.id, *(d.id for d in registered.vm_context.disks)]


async def test_every_rpc_answers_bad_requests_cleanly(oma_server: OmaServer, channel: grpc.aio.Channel) -> None:
    walk = await asyncio.to_thread(Walk.by_reflection, endpoint(oma_server), channel, SEED)
    services = {m.containing_service.full_name for m in walk.methods}
    assert set(SERVICE_NAMES) <= services and "grpc.health.v1.Health" in services
    walk.ids = await _seed_real_ids(channel)

    started = time.monotonic()
    outcomes = await walk.run(CALLS)
    print(f"\nreflection walk (seed {SEED}, {oma_server.app.db.kind}): {summary(outcomes, started)}")

    assert len(outcomes) == CALLS
    bad = [o for o in outcomes if o.code in FORBIDDEN]
    assert not bad, "\n".join(f"{o.method} [{o.kind}] {o.code.name}: {o.details} <- {o.request}" for o in bad[:20])
    hung = [o for o in outcomes if o.code == grpc.StatusCode.DEADLINE_EXCEEDED]
    assert not hung, "\n".join(f"{o.method} [{o.kind}] hung: {o.request}" for o in hung[:20])
    connects = [o for o in outcomes if o.method == CONNECT]
    assert connects, "the walk reached no Connect"
    wrong = [o for o in connects if o.code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)]
    assert not wrong, "\n".join(f"Connect [{o.kind}] {o.code.name}: {o.details} <- {o.request}" for o in wrong[:20])

    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", *SERVICE_NAMES]:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
