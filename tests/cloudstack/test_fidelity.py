"""The fidelity suite: the adapter against documented CloudStack answers, and the simulator compared with them.

1. The adapter's parsing on every fixture, whole and with every optional field removed (the adapter needs only what
   the real API promises), and its reading of errors, failed jobs and limits.
2. The simulator's own answers, over HTTP, compared with the fixtures field by field: nothing invented, nothing
   required missing, the same JSON types, no field before the release that added it — at each release whose answers
   differ (destroyVirtualMachine with expunge).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cs import CloudStack
from cs.client import transform

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import (
    CloudStackAuthError,
    CloudStackNotFound,
    CloudStackParamError,
    CloudStackUnknownCommand,
    from_cloudstack_error,
)
from oma_server.cloudstack.limits import data_volumes_from_api, limit_from_refusal, sizes_from_api
from oma_server.cloudstack.models import (
    GIB,
    AsyncJob,
    DiskOffering,
    JobStatus,
    Network,
    ServiceOffering,
    Snapshot,
    Template,
    VirtualMachine,
    Volume,
    VolumeType,
    Zone,
)
from oma_server.cloudstack.simulator import CloudStackSimulator
from tests.cloudstack.fidelity import Fixture, all_fixtures, differences, load, without_optional

VERSIONS_WITH_DIFFERENT_ANSWERS = ("4.18.1.0", "4.20.1.0", "4.20.2.0")


# ---- 1. the adapter on documented answers ---------------------------------------------------------------------
def test_every_fixture_cites_its_source_and_is_used() -> None:
    names = all_fixtures()
    assert len(names) >= 30
    for name in names:
        fixture = load(name)
        assert fixture.sources and all(len(s) > 20 for s in fixture.sources), name
    used = Path(__file__).read_text()
    assert [n for n in names if f'"{n}"' not in used] == []


def _both(fixture: Fixture) -> list[dict[str, Any]]:
    return [fixture.body, without_optional(fixture)]


def _item(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body[key]
    return value[0] if isinstance(value, list) else value


def _result(body: dict[str, Any], key: str) -> dict[str, Any]:
    return dict(body["jobresult"][key])


@pytest.mark.parametrize(
    ("name", "key", "parse", "expect"),
    [
        ("listZones.json", "zone", Zone.from_api, {"name": "zone-1", "allocation_state": "Enabled"}),
        (
            "listServiceOfferings.json",
            "serviceoffering",
            ServiceOffering.from_api,
            {"cpu_number": 1, "memory_mib": 512},
        ),
        (
            "listDiskOfferings.json",
            "diskoffering",
            DiskOffering.from_api,
            {"is_customized": True, "disk_size_bytes": 0},
        ),
        ("listNetworks.json", "network", Network.from_api, {"cidr": "10.1.1.0/24", "type": "Isolated"}),
        ("listTemplates.json", "template", Template.from_api, {"is_ready": True, "size_bytes": 2 * GIB}),
        ("listVolumes.json", "volume", Volume.from_api, {"size_bytes": 10 * GIB, "type": VolumeType.DATADISK}),
        ("listSnapshots.json", "snapshot", Snapshot.from_api, {"state": "BackedUp", "revertable": True}),
        ("listVirtualMachines.json", "virtualmachine", VirtualMachine.from_api, {"state": "Running"}),
    ],
)
def test_list_answers_parse(name: str, key: str, parse: Any, expect: dict[str, Any]) -> None:
    for body in _both(load(name)):
        parsed = parse(_item(body, key))
        assert parsed.id == _item(body, key)["id"]
        assert {k: getattr(parsed, k) for k in expect} == expect


@pytest.mark.parametrize(
    ("name", "key", "parse", "expect"),
    [
        ("createVolume.job.json", "volume", Volume.from_api, {"state": "Allocated", "virtual_machine_id": None}),
        ("attachVolume.job.json", "volume", Volume.from_api, {"device_id": 1, "attached": True}),
        ("resizeVolume.job.json", "volume", Volume.from_api, {"size_bytes": 20 * GIB}),
        ("detachVolume.job.json", "volume", Volume.from_api, {"attached": False, "device_id": None}),
        ("createSnapshot.job.json", "snapshot", Snapshot.from_api, {"virtual_size_bytes": 10 * GIB}),
        ("revertSnapshot.job.json", "snapshot", Snapshot.from_api, {"state": "BackedUp"}),
        ("deployVirtualMachine.job.json", "virtualmachine", VirtualMachine.from_api, {"state": "Running"}),
        ("startVirtualMachine.job.json", "virtualmachine", VirtualMachine.from_api, {"state": "Running"}),
        ("stopVirtualMachine.job.json", "virtualmachine", VirtualMachine.from_api, {"state": "Stopped"}),
        ("destroyVirtualMachine.job.json", "virtualmachine", VirtualMachine.from_api, {"state": "Destroyed"}),
    ],
)
def test_job_results_parse(name: str, key: str, parse: Any, expect: dict[str, Any]) -> None:
    for body in _both(load(name)):
        job = AsyncJob.from_api(body)
        assert job.status is JobStatus.SUCCEEDED and job.done
        parsed = parse(job.result[key])
        assert {k: getattr(parsed, k) for k in expect} == expect
    vm = VirtualMachine.from_api(_result(without_optional(load("deployVirtualMachine.job.json")), "virtualmachine"))
    assert [(n.network_id, n.ip_address, n.is_default) for n in vm.nics] == [
        ("87503ba2-d59d-4a5e-8f7f-b3f486cedbd8", "10.1.1.62", True)
    ]


@pytest.mark.parametrize(
    "name",
    [
        "destroyVirtualMachine.expunge.4.18.1-4.20.1.job.json",
        "destroyVirtualMachine.expunge.after-pr11352.job.json",
        "deleteSnapshot.job.json",
    ],
)
def test_results_without_an_object_are_plain_successes(name: str) -> None:
    """What the adapter takes from these is the job's success, nothing else (the expunge answers name no VM)."""
    job = AsyncJob.from_api(load(name).body)
    assert job.status is JobStatus.SUCCEEDED
    assert all("id" not in value for value in job.result.values() if isinstance(value, dict))


def test_submit_and_pending_job() -> None:
    submit = load("createVolume.submit.json").body
    assert set(submit) == {"id", "jobid"}
    pending = AsyncJob.from_api(load("queryAsyncJobResult.pending.json").body)
    assert pending.status is JobStatus.PENDING and not pending.done and pending.result == {}
    assert load("deleteVolume.json").body == {"success": True}


def test_failed_jobs_become_typed_errors() -> None:
    failed = AsyncJob.from_api(load("queryAsyncJobResult.failed.json").body)
    assert failed.status is JobStatus.FAILED and failed.result_code == 431 == failed.result["errorcode"]
    err = from_cloudstack_error(failed.result, command="attachVolume", jobid=failed.id)
    assert isinstance(err, CloudStackParamError) and err.errorcode == 431
    assert err.cserrorcode is None  # a job result has no cserrorcode

    limit = AsyncJob.from_api(load("queryAsyncJobResult.failed-limit.json").body)
    refusal = from_cloudstack_error(limit.result, command="attachVolume", jobid=limit.id)
    assert limit_from_refusal(refusal) == 14


@pytest.mark.parametrize(
    ("name", "command", "cls"),
    [
        ("error.401.json", "listZones", CloudStackAuthError),
        ("error.401.not-available.json", "listConfigurations", CloudStackUnknownCommand),
        ("error.431.json", "attachVolume", CloudStackParamError),
        ("error.431.volume-size.json", "createVolume", CloudStackParamError),
        ("error.432.older-unknown-command.json", "listFoos", CloudStackUnknownCommand),
    ],
)
def test_error_answers_become_typed_errors(name: str, command: str, cls: type[Exception]) -> None:
    fixture = load(name)
    err = from_cloudstack_error(fixture.body, command=command, http_status=fixture.status)
    assert type(err) is cls and err.errortext == fixture.body["errortext"]
    # the bare 401 of an unknown command reads as bad keys; client.request tells them apart (listCapabilities)
    bare = load("error.401.unknown-command.json")
    assert type(from_cloudstack_error(bare.body, command="listFoos", http_status=bare.status)) is CloudStackAuthError


def test_limits_from_documented_answers() -> None:
    for capability in _both(load("listCapabilities.json")):
        configurations = load("listConfigurations.json").body["configuration"]
        sizes = sizes_from_api(capability["capability"], configurations)
        assert (sizes.custom_min_gib, sizes.custom_max_gib, sizes.max_volume_gib) == (1, 1024, None)
        assert sizes.problem(1024 * GIB) == ""
        assert "custom.diskoffering.size.max is 1024 GB" in sizes.problem(1024 * GIB + 1)
        max_volume = [{"name": "storage.max.volume.size", "value": "2000"}]
        assert sizes_from_api(capability["capability"], max_volume).max_gib == 1024
    vm = _item(load("listVirtualMachines.json").body, "virtualmachine")
    host = _item(load("listHosts.json").body, "host")
    rows = load("listHypervisorCapabilities.json").body["hypervisorCapabilities"]
    limit = data_volumes_from_api(vm, host, rows)
    assert (limit.limit, limit.hypervisor, limit.hypervisor_version) == (32, "KVM", "default")
    exact = [*rows, {**rows[0], "hypervisorversion": "8.2", "maxdatavolumeslimit": 20}]
    assert data_volumes_from_api(vm, {**host, "hypervisorversion": "8.2"}, exact).limit == 20
    assert data_volumes_from_api({**vm, "hypervisor": "VMware"}, host, rows).limit is None


# ---- 2. the simulator's answers against the documented ones ---------------------------------------------------------
def test_the_comparison_catches_every_kind_of_difference() -> None:
    fixture = load("listVolumes.json")
    documented = fixture.body["volume"][0]
    volume = {k: v for k, v in documented.items() if k != "state"}  # a required field missing
    volume.update(size=str(documented["size"]), invented=1)  # a wrong type, a field CloudStack does not send
    problems = differences(fixture, {"count": 1, "volume": [volume]}, "4.18.0.0")  # two fields are 4.20's
    assert sorted(p.split(":")[0] for p in problems) == [
        "$.volume[0].deleteprotection",
        "$.volume[0].domainpath",
        "$.volume[0].invented",
        "$.volume[0].size",
        "$.volume[0].state",
    ]
    assert differences(fixture, fixture.body, "4.20.0.0") == []
    assert differences(fixture, without_optional(fixture), "4.20.0.0") == []


class Raw:
    """Signed requests through `cs`'s own signing; answers kept exactly as sent (envelope and status)."""

    def __init__(self, sim: CloudStackSimulator, http: aiohttp.ClientSession, secret: str | None = None) -> None:
        self.sim = sim
        self.http = http
        self.signer = CloudStack(sim.url, key=sim.api_key, secret=secret or sim.secret_key)

    async def __call__(self, command: str, **params: Any) -> tuple[int, dict[str, Any]]:
        _kind, prepared = self.signer._prepare_request(command, **params)
        transform(prepared)
        self.signer._sign(prepared)
        async with self.http.get(self.sim.url, params=prepared) as r:
            assert r.headers["Content-Type"].startswith("application/json")
            return r.status, await r.json()

    async def job(self, command: str, **params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the submit answer, the final queryAsyncJobResult answer)."""
        status, submitted = await self(command, **params)
        assert status == 200, submitted
        job_id = submitted[f"{command.lower()}response"]["jobid"]
        while True:
            _, answer = await self("queryAsyncJobResult", jobid=job_id)
            if answer["queryasyncjobresultresponse"]["jobstatus"] != 0:
                return submitted, answer
            await asyncio.sleep(0.01)


def same_as_documented(name: str, status: int, answer: dict[str, Any], version: str) -> None:
    fixture = load(name)
    assert status == fixture.status, (name, answer)
    assert list(answer) == [fixture.envelope], name
    problems = differences(fixture, answer[fixture.envelope], version)
    assert problems == [], f"{name}: the simulator differs from CloudStack {version}:\n" + "\n".join(problems)


async def _sim(tmp_path: Path, version: str) -> CloudStackSimulator:
    sim = CloudStackSimulator(tmp_path / f"cs-{version}", seed_config={"cloudstack_version": version})
    await sim.start()
    sim.state.job_delay_s = 0.01
    return sim


@pytest.fixture(params=VERSIONS_WITH_DIFFERENT_ANSWERS)
async def versioned(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Raw, str]]:
    sim = await _sim(tmp_path, request.param)
    try:
        async with aiohttp.ClientSession() as http:
            yield Raw(sim, http), request.param
    finally:
        await sim.stop()


async def test_catalogue_answers(versioned: tuple[Raw, str]) -> None:
    raw, version = versioned
    for name, command, params in [
        ("listZones.json", "listZones", {}),
        ("listServiceOfferings.json", "listServiceOfferings", {}),
        ("listDiskOfferings.json", "listDiskOfferings", {}),
        ("listNetworks.json", "listNetworks", {}),
        ("listTemplates.json", "listTemplates", {"templatefilter": "executable"}),
        ("listCapabilities.json", "listCapabilities", {}),
        ("listConfigurations.json", "listConfigurations", {"name": "custom.diskoffering.size"}),
        ("listHypervisorCapabilities.json", "listHypervisorCapabilities", {}),
        ("listHosts.json", "listHosts", {}),
        ("listVirtualMachines.json", "listVirtualMachines", {}),
    ]:
        same_as_documented(name, *await raw(command, **params), version)


async def test_volume_and_snapshot_answers(versioned: tuple[Raw, str]) -> None:
    raw, version = versioned
    sim = raw.sim
    _, offerings = await raw("listDiskOfferings")
    custom = next(o for o in offerings["listdiskofferingsresponse"]["diskoffering"] if o["iscustomized"])
    submitted, created = await raw.job(
        "createVolume", name="DATA-1", zoneid=sim.zone_id, diskofferingid=custom["id"], size=10
    )
    same_as_documented("createVolume.submit.json", 200, submitted, version)
    same_as_documented("createVolume.job.json", 200, created, version)
    volume_id = submitted["createvolumeresponse"]["id"]
    _, attached = await raw.job("attachVolume", id=volume_id, virtualmachineid=sim.oma_vm_id)
    same_as_documented("attachVolume.job.json", 200, attached, version)
    same_as_documented("listVolumes.json", *await raw("listVolumes", id=volume_id), version)
    _, resized = await raw.job("resizeVolume", id=volume_id, size=20)
    same_as_documented("resizeVolume.job.json", 200, resized, version)
    _, snapshot = await raw.job("createSnapshot", volumeid=volume_id)
    same_as_documented("createSnapshot.job.json", 200, snapshot, version)
    snapshot_id = snapshot["queryasyncjobresultresponse"]["jobresult"]["snapshot"]["id"]
    same_as_documented("listSnapshots.json", *await raw("listSnapshots", id=snapshot_id), version)
    _, failed = await raw.job("attachVolume", id=volume_id, virtualmachineid=sim.oma_vm_id)
    same_as_documented("queryAsyncJobResult.failed.json", 200, failed, version)
    _, detached = await raw.job("detachVolume", id=volume_id)
    same_as_documented("detachVolume.job.json", 200, detached, version)
    _, reverted = await raw.job("revertSnapshot", id=snapshot_id)
    same_as_documented("revertSnapshot.job.json", 200, reverted, version)
    _, deleted = await raw.job("deleteSnapshot", id=snapshot_id)
    same_as_documented("deleteSnapshot.job.json", 200, deleted, version)
    same_as_documented("deleteVolume.json", *await raw("deleteVolume", id=volume_id), version)


async def test_vm_answers_and_destroy_by_release(versioned: tuple[Raw, str]) -> None:
    raw, version = versioned
    sim = raw.sim
    _, so = await raw("listServiceOfferings")
    _, tmpl = await raw("listTemplates", templatefilter="executable")
    _, nets = await raw("listNetworks")
    submitted, deployed = await raw.job(
        "deployVirtualMachine",
        serviceofferingid=so["listserviceofferingsresponse"]["serviceoffering"][0]["id"],
        templateid=tmpl["listtemplatesresponse"]["template"][0]["id"],
        zoneid=sim.zone_id,
        networkids=nets["listnetworksresponse"]["network"][0]["id"],
        name="testDummyVM",
    )
    same_as_documented("deployVirtualMachine.job.json", 200, deployed, version)
    vm_id = submitted["deployvirtualmachineresponse"]["id"]
    _, stopped = await raw.job("stopVirtualMachine", id=vm_id)
    same_as_documented("stopVirtualMachine.job.json", 200, stopped, version)
    _, started = await raw.job("startVirtualMachine", id=vm_id)
    same_as_documented("startVirtualMachine.job.json", 200, started, version)
    await raw.job("stopVirtualMachine", id=vm_id)
    _, destroyed = await raw.job("destroyVirtualMachine", id=vm_id)
    same_as_documented("destroyVirtualMachine.job.json", 200, destroyed, version)
    _, expunged = await raw.job("destroyVirtualMachine", id=vm_id, expunge="true")
    expunge_fixture = (
        "destroyVirtualMachine.expunge.after-pr11352.job.json"
        if version == "4.20.2.0"
        else "destroyVirtualMachine.expunge.4.18.1-4.20.1.job.json"
    )
    same_as_documented(expunge_fixture, 200, expunged, version)
    assert vm_id not in sim.state.vms


async def test_error_answers(versioned: tuple[Raw, str]) -> None:
    raw, version = versioned
    sim = raw.sim
    _, listed = await raw("listVolumes")
    volume_id = listed["listvolumesresponse"]["volume"][0]["id"]
    same_as_documented("error.431.json", *await raw("attachVolume", id=volume_id), version)
    _, offerings = await raw("listDiskOfferings")
    custom = next(o for o in offerings["listdiskofferingsresponse"]["diskoffering"] if o["iscustomized"])
    status, too_big = await raw("createVolume", name="big", zoneid=sim.zone_id, diskofferingid=custom["id"], size=1100)
    same_as_documented("error.431.volume-size.json", status, too_big, version)
    assert too_big["createvolumeresponse"]["errortext"] == load("error.431.volume-size.json").body["errortext"]
    same_as_documented("error.401.unknown-command.json", *await raw("listFoos"), version)
    async with aiohttp.ClientSession() as http:
        same_as_documented("error.401.json", *await Raw(sim, http, secret="wrong")("listZones"), version)


async def test_data_disk_limit_refusal_and_role_refusal(tmp_path: Path) -> None:
    seed = {
        "hypervisor_capabilities": [{"hypervisor": "KVM", "hypervisorversion": "default", "maxdatavolumeslimit": 1}]
    }
    async with CloudStackSimulator(tmp_path / "full", seed_config=seed) as sim, aiohttp.ClientSession() as http:
        sim.state.job_delay_s = 0.01
        raw = Raw(sim, http)
        _, offerings = await raw("listDiskOfferings")
        custom = next(o for o in offerings["listdiskofferingsresponse"]["diskoffering"] if o["iscustomized"])
        ids = []
        for n in range(2):
            submitted, _ = await raw.job(
                "createVolume", name=f"d{n}", zoneid=sim.zone_id, diskofferingid=custom["id"], size=1
            )
            ids.append(submitted["createvolumeresponse"]["id"])
        await raw.job("attachVolume", id=ids[0], virtualmachineid=sim.oma_vm_id)
        _, refused = await raw.job("attachVolume", id=ids[1], virtualmachineid=sim.oma_vm_id)
        same_as_documented("queryAsyncJobResult.failed-limit.json", 200, refused, sim.state.cloudstack_version)
        assert (
            "maximum number of data disks (1) attached"
            in refused["queryasyncjobresultresponse"]["jobresult"]["errortext"]
        )
    async with CloudStackSimulator(tmp_path / "user", seed_config={"roletype": "User"}) as sim:
        async with aiohttp.ClientSession() as http:
            answer = await Raw(sim, http)("listConfigurations")
        same_as_documented("error.401.not-available.json", *answer, sim.state.cloudstack_version)


async def test_the_adapter_destroys_on_every_release(tmp_path: Path) -> None:
    """destroy_vm with expunge ends the same way whatever shape the job result has; a VM that is gone counts."""
    for version in VERSIONS_WITH_DIFFERENT_ANSWERS:
        sim = await _sim(tmp_path, version)
        try:
            async with CloudStackClient(sim.settings()) as client:
                offering = (await client.list_service_offerings())[0]
                template = (await client.list_templates())[0]
                network = (await client.list_networks())[0]
                vm = await client.deploy_vm("doomed", offering.id, template.id, sim.zone_id, [network.id])
                assert await client.destroy_vm(vm.id, expunge=True) is None
                with pytest.raises(CloudStackNotFound):
                    await client.get_vm(vm.id)
                assert await client.destroy_vm(vm.id, expunge=True) is None
        finally:
            await sim.stop()
