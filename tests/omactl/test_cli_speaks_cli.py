"""omactl speaks CLI: names wherever ids are, hints that name omactl commands, tables that never wrap ids, a
credential file of mode 0600, the CloudStack inventory, source power and jobs of every kind — real omactl processes
against a real in-process OMA (SQLite, the CloudStack simulator), a scripted appliance where one must answer."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from pathlib import Path

import grpc

from oma.common.v1 import inventory_pb2
from oma.v1 import vm_context_pb2, vm_context_pb2_grpc
from oma_server.cloudstack.sim_seed import _seed_network
from oma_server.server import OmaServer
from tests.factories import Enrolled, RawStream, enroll, inventory
from tests.omactl.conftest import assert_one_error_line, run_omactl, spawn_omactl
from vma.v1 import stream_pb2

_STAMP = re.compile(r"^\S+ ")  # the time stamp a watch line starts with


async def register(channel: grpc.aio.Channel, appliance_id: str, name: str, vcenter: str = "vc.lab") -> str:
    vm = inventory(name=name)
    vm.vcenter = vcenter
    stub = vm_context_pb2_grpc.VmContextServiceStub(channel)
    reply = await stub.RegisterVmContext(
        vm_context_pb2.RegisterVmContextRequest(appliance_id=appliance_id, virtual_machine=vm)
    )
    return reply.vm_context.id


async def test_names_wherever_ids_and_ambiguity_lists_the_candidates(address: str, channel: grpc.aio.Channel) -> None:
    vma = await enroll(channel, "vma-east-1")
    first = await register(channel, vma.appliance_id, "web-01")
    second = await register(channel, vma.appliance_id, "web-01", vcenter="vc.other")
    db = await register(channel, vma.appliance_id, "db-01")

    by_name, by_id, ambiguous, missing, appliance, quiet = await asyncio.gather(
        run_omactl(address, "--json", "vms", "show", "db-01"),
        run_omactl(address, "--json", "vms", "show", db),
        run_omactl(address, "vms", "show", "web-01"),
        run_omactl(address, "replicate", "start", "web-03"),
        run_omactl(address, "--json", "appliances", "show", "vma-east-1"),
        run_omactl(address, "-q", "vms", "list", "--appliance", "vma-east-1"),
    )
    assert json.loads(by_name.out)["id"] == db and json.loads(by_id.out)["id"] == db
    line = assert_one_error_line(ambiguous, "INVALID_ARGUMENT: 2 VM contexts are named 'web-01'", "(NAME_AMBIGUOUS)")
    assert first in line and second in line and "vc.lab" in line and "vc.other" in line
    line = assert_one_error_line(missing, "NOT_FOUND: ", "'web-03'", "'omactl vms list'", "(VM_CONTEXT_NOT_FOUND)")
    assert "ListVmContexts" not in line
    assert json.loads(appliance.out)["id"] == vma.appliance_id
    assert sorted(quiet.out.split()) == sorted([first, second, db])


async def test_hints_name_the_omactl_command(address: str, channel: grpc.aio.Channel) -> None:
    vma = await enroll(channel)
    await register(channel, vma.appliance_id, "db-01")
    preflight, nothing_to_undo, no_appliance = await asyncio.gather(
        run_omactl(address, "preflight", "db-01"),
        run_omactl(address, "failover", "cleanup", "db-01"),
        run_omactl(address, "vms", "discover", "--appliance", "nope"),
    )
    assert preflight.code == 1  # not ready: the table says why, in omactl's words
    assert "'omactl replicate start db-01'" in preflight.out and "StartReplication" not in preflight.out
    assert "'omactl network-map create'" in preflight.out and "CreateNetworkMapping" not in preflight.out
    assert_one_error_line(nothing_to_undo, "FAILED_PRECONDITION: ", "nothing for cleanup to undo", "(NOTHING_TO_UNDO)")
    assert_one_error_line(no_appliance, "NOT_FOUND: ", "'omactl appliances list'", "(APPLIANCE_NOT_FOUND)")


async def test_tables_never_wrap_ids(address: str, channel: grpc.aio.Channel) -> None:
    vma = await enroll(channel, "vma-with-a-rather-long-name-for-an-appliance")
    ids = [await register(channel, vma.appliance_id, f"vm-{i}-with-a-long-name") for i in range(3)]
    listed = await run_omactl(address, "vms", "list", env={"COLUMNS": "80"})
    assert listed.code == 0, listed
    rows = [line for line in listed.out.splitlines() if any(i in line for i in ids)]
    assert len(rows) == 3  # one line per VM: nothing folded onto a second line
    for vm_id, row in zip(ids, sorted(rows, key=lambda r: [i in r for i in ids].index(True)), strict=True):
        assert vm_id in row and vma.appliance_id in row


async def test_enroll_writes_the_credential_file_0600(address: str, channel: grpc.aio.Channel, tmp_path: Path) -> None:
    path = tmp_path / "vma-east-1.credential"
    enrolled = await run_omactl(address, "appliances", "enroll", "vma-east-1", "--credential-file", str(path))
    assert enrolled.code == 0, enrolled
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credential = path.read_text().strip()
    assert credential and credential not in enrolled.out  # written, not shown
    assert f"--credential-file {path}" in enrolled.out and "vma-agent run" in enrolled.out
    appliance_id = json.loads((await run_omactl(address, "--json", "appliances", "show", "vma-east-1")).out)["id"]
    stream = RawStream(channel)  # the file holds what the appliance's Hello needs
    welcome = await stream.hello(Enrolled(appliance_id, credential))
    assert welcome.session_id
    await stream.close()
    quiet = await run_omactl(address, "-q", "appliances", "enroll", "vma-west-1", "--credential-file", str(path))
    assert quiet.code == 0 and re.fullmatch(r"[0-9a-f-]{36}\n", quiet.out), quiet
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() != credential


async def test_cloud_inventory_and_network_map_by_name(address: str, oma: OmaServer, channel: grpc.aio.Channel) -> None:
    vma = await enroll(channel)
    await register(channel, vma.appliance_id, "db-01")
    sim = oma.app.simulator
    assert sim is not None and oma.app.cloud is not None
    networks, as_json, templates, zones = await asyncio.gather(
        run_omactl(address, "cloud", "networks"),
        run_omactl(address, "--json", "cloud", "networks"),
        run_omactl(address, "cloud", "templates"),
        run_omactl(address, "cloud", "zones"),
    )
    assert "guest-net-1" in networks.out and "10.1.1.0/24" in networks.out and "Isolated" in networks.out
    guest = next(n for n in json.loads(as_json.out) if n["name"] == "guest-net-1")
    assert "Ubuntu 22.04" in templates.out and "sim-zone-1" in zones.out

    created = await run_omactl(
        address, "--json", "network-map", "create", "--source", "VM Network", "--target", "guest-net-1", "--vm", "db-01"
    )
    assert created.code == 0, created
    assert json.loads(created.out)["target_network_id"] == guest["id"]

    oma.app.cloud.ttl_s = 0  # see the network added below at once
    _seed_network(sim.state, {"name": "guest-net-1", "cidr": "10.2.2.0/24", "gateway": "10.2.2.1"})
    ambiguous = await run_omactl(
        address, "network-map", "create", "--source", "Other", "--target", "guest-net-1", "--vm", "db-01"
    )
    line = assert_one_error_line(ambiguous, "2 CloudStack networks are named 'guest-net-1'", "(NAME_AMBIGUOUS)")
    assert guest["id"] in line and "10.1.1.0/24" in line and "10.2.2.0/24" in line


async def answer_power_off(stream: RawStream) -> None:
    command = (await stream.recv_until("command", timeout=20)).command
    assert command.WhichOneof("kind") == "power_off", command
    await stream.send(
        command_result=stream_pb2.CommandResult(
            command_id=command.command_id,
            outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED,
            power=stream_pb2.PowerResult(power_state=inventory_pb2.POWER_STATE_POWERED_OFF),
        )
    )


async def test_power_off_watched_and_jobs_of_every_kind(address: str, channel: grpc.aio.Channel) -> None:
    vma = await enroll(channel)
    await register(channel, vma.appliance_id, "db-01")
    stream = RawStream(channel)
    await stream.hello(vma)

    watch = await spawn_omactl(address, "vms", "power-off", "db-01", "--watch")
    await answer_power_off(stream)
    out, err = await asyncio.wait_for(watch.communicate(), 20)
    assert watch.returncode == 0, (out, err)
    lines = out.decode().splitlines()
    assert "completed: the source VM is powered off" in lines[-1]
    bodies = [_STAMP.sub("", line) for line in lines if line.split(" ", 1)[-1].startswith("job ")]
    assert bodies and len(bodies) == len(set(bodies)), lines  # each change once (several revisions look alike)
    job_id = lines[0].split(" job ", 1)[1].split()[0]

    listed, shown, refused, log = await asyncio.gather(
        run_omactl(address, "jobs", "list", "--vm", "db-01"),
        run_omactl(address, "jobs", "show", job_id),
        run_omactl(address, "jobs", "cancel", job_id),
        run_omactl(address, "jobs", "log", job_id),
    )
    assert job_id in listed.out and "power_off_source" in listed.out
    assert "power_off_source" in shown.out and "completed" in shown.out
    assert_one_error_line(refused, "FAILED_PRECONDITION: ", "(JOB_NOT_CANCELLABLE)")
    assert "power_off" in log.out and "completed" in log.out
    await stream.close()
