"""The simulator's HTTP answers against documented CloudStack responses (tests/fixtures/cloudstack).

For every documented response: the same envelope (`<command>response`), the same HTTP status, and every
documented key present with the same JSON type, recursively (lists compared by their first element). A few
keys CloudStack only sends in some deployments are listed in OPTIONAL.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cs import CloudStack
from cs.client import transform

from oma_server.cloudstack.simulator import CloudStackSimulator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cloudstack"
#: documented keys the simulator may leave out (host placement, VLAN URIs, metrics)
OPTIONAL = {"hostid", "hostname", "isolationuri", "broadcasturi", "description", "vmdisplayname"}


def _fixture(name: str) -> tuple[int, str, Any]:
    doc = json.loads((FIXTURES / name).read_text())
    status = doc.pop("_http_status", 200)
    [(envelope, body)] = doc.items()
    return status, envelope, body


def _jtype(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def assert_same_shape(documented: Any, actual: Any, path: str = "$") -> None:
    assert _jtype(actual) == _jtype(documented), f"{path}: {_jtype(actual)} where CloudStack has {_jtype(documented)}"
    if isinstance(documented, dict):
        for key, value in documented.items():
            if key in OPTIONAL and key not in actual:
                continue
            assert key in actual, f"{path}.{key} missing (CloudStack sends it)"
            assert_same_shape(value, actual[key], f"{path}.{key}")
    elif isinstance(documented, list) and documented and actual:
        assert_same_shape(documented[0], actual[0], f"{path}[0]")


class Raw:
    """Signed requests through `cs`'s own signing, answers kept exactly as sent (envelope and status)."""

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

    async def job(self, command: str, **params: Any) -> dict[str, Any]:
        status, body = await self(command, **params)
        assert status == 200, body
        job_id = body[f"{command.lower()}response"]["jobid"]
        for _ in range(200):
            status, answer = await self("queryAsyncJobResult", jobid=job_id)
            if answer["queryasyncjobresultresponse"]["jobstatus"] != 0:
                return answer
            await asyncio.sleep(0.02)
        raise AssertionError("job did not finish")


@pytest.fixture
async def raw(sim: CloudStackSimulator):
    async with aiohttp.ClientSession() as http:
        yield Raw(sim, http)


def _check(name: str, status: int, answer: dict[str, Any]) -> None:
    doc_status, envelope, body = _fixture(name)
    assert status == doc_status
    assert list(answer) == [envelope]
    assert_same_shape(body, answer[envelope])


@pytest.mark.parametrize(
    ("fixture", "command", "params"),
    [
        ("listZones.json", "listZones", {}),
        ("listServiceOfferings.json", "listServiceOfferings", {}),
        ("listDiskOfferings.json", "listDiskOfferings", {}),
        ("listNetworks.json", "listNetworks", {}),
        ("listTemplates.json", "listTemplates", {"templatefilter": "executable"}),
    ],
)
async def test_catalogue_shapes(raw: Raw, fixture: str, command: str, params: dict[str, str]) -> None:
    status, answer = await raw(command, **params)
    _check(fixture, status, answer)


async def test_volume_and_job_shapes(raw: Raw, sim: CloudStackSimulator) -> None:
    _, offerings = await raw("listDiskOfferings")
    custom = next(o for o in offerings["listdiskofferingsresponse"]["diskoffering"] if o["iscustomized"])
    status, submitted = await raw(
        "createVolume", name="DATA-1", zoneid=sim.zone_id, diskofferingid=custom["id"], size=1
    )
    _check("createVolume.submit.json", status, submitted)
    volume_id = submitted["createvolumeresponse"]["id"]

    attached = await raw.job("attachVolume", id=volume_id, virtualmachineid=sim.oma_vm_id)
    _check("attachVolume.job.json", 200, attached)

    status, listed = await raw("listVolumes", id=volume_id)
    _check("listVolumes.json", status, listed)

    snapshot = await raw.job("createSnapshot", volumeid=volume_id)
    _check("createSnapshot.job.json", 200, snapshot)

    failed = await raw.job("attachVolume", id=volume_id, virtualmachineid=sim.oma_vm_id)
    _check("queryAsyncJobResult.failed.json", 200, failed)


async def test_deploy_job_shape(raw: Raw) -> None:
    _, so = await raw("listServiceOfferings")
    _, tmpl = await raw("listTemplates", templatefilter="executable")
    _, nets = await raw("listNetworks")
    _, zones = await raw("listZones")
    answer = await raw.job(
        "deployVirtualMachine",
        serviceofferingid=so["listserviceofferingsresponse"]["serviceoffering"][0]["id"],
        templateid=tmpl["listtemplatesresponse"]["template"][0]["id"],
        zoneid=zones["listzonesresponse"]["zone"][0]["id"],
        networkids=nets["listnetworksresponse"]["network"][0]["id"],
        name="testDummyVM",
    )
    _check("deployVirtualMachine.job.json", 200, answer)


async def test_error_shapes(raw: Raw, sim: CloudStackSimulator) -> None:
    _, listed = await raw("listVolumes")
    volume_id = listed["listvolumesresponse"]["volume"][0]["id"]
    status, answer = await raw("attachVolume", id=volume_id)
    _check("error.431.json", status, answer)
    assert "missing parameter virtualmachineid" in answer["attachvolumeresponse"]["errortext"]

    status, answer = await raw("listFoos")
    _check("error.432.json", status, answer)

    async with aiohttp.ClientSession() as http:
        status, answer = await Raw(sim, http, secret="wrong")("listZones")
    _check("error.401.json", status, answer)
