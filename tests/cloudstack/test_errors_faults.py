"""Authentication, faults on demand, retries, async job deadlines and cancellation, secrets kept out of logs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from loguru import logger

from oma_server.cloudstack import device_path, is_transient
from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.errors import (
    CloudStackAuthError,
    CloudStackInternalError,
    CloudStackJobLost,
    CloudStackJobTimeout,
    CloudStackParamError,
    CloudStackUnavailable,
    CloudStackUnknownCommand,
    from_cloudstack_error,
)
from oma_server.cloudstack.models import GIB
from oma_server.cloudstack.simulator import CloudStackSimulator
from oma_server.errors import Category
from tests.waiting import until


def _signed_url(sim: CloudStackSimulator, params: dict[str, str], secret: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='*')}" for k, v in sorted(params.items()))
    digest = hmac.new(secret.encode(), query.lower().encode(), hashlib.sha1).digest()
    signature = quote(base64.b64encode(digest).decode(), safe="")
    return f"{sim.url}?{query}&signature={signature}"


async def test_wrong_secret_is_unauthenticated(sim: CloudStackSimulator) -> None:
    bad = CloudStackClient(sim.settings(secret_key="not-the-secret"))
    try:
        with pytest.raises(CloudStackAuthError) as info:
            await bad.list_zones()
    finally:
        await bad.close()
    err = info.value
    assert err.category is Category.UNAUTHENTICATED and err.reason == "CLOUDSTACK_UNAUTHENTICATED"
    assert err.http_status == 401 and err.metadata["cloudstack_errorcode"] == "401"
    assert "unable to verify user credentials" in err.metadata["cloudstack_errortext"]
    assert sim.state.request_count("listZones") == 1  # a 401 is not retried


async def test_wrong_api_key_is_unauthenticated(sim: CloudStackSimulator) -> None:
    async with CloudStackClient(sim.settings(api_key="someone-else")) as bad:
        with pytest.raises(CloudStackAuthError):
            await bad.list_zones()


async def test_signature_tampering_and_expiry_over_raw_http(sim: CloudStackSimulator) -> None:
    future = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S%z")
    past = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S%z")
    base = {"command": "listZones", "apiKey": sim.api_key, "response": "json"}
    async with aiohttp.ClientSession() as http:
        v3 = {**base, "signatureVersion": "3", "expires": future}
        async with http.get(_signed_url(sim, v3, sim.secret_key)) as r:
            assert r.status == 200
            body = await r.json()
            assert body["listzonesresponse"]["count"] == 1
        async with http.get(_signed_url(sim, base, sim.secret_key)) as r:  # legacy, no expires
            assert r.status == 200
        tampered = _signed_url(sim, v3, sim.secret_key).replace("listZones", "listVolumes")
        async with http.get(tampered) as r:
            assert r.status == 401
            body = await r.json()
            assert body == {
                "listvolumesresponse": {
                    "uuidList": [],
                    "errorcode": 401,
                    "errortext": "unable to verify user credentials and/or request signature",
                }
            }
        expired = {**base, "signatureVersion": "3", "expires": past}
        async with http.get(_signed_url(sim, expired, sim.secret_key)) as r:
            assert r.status == 401
        no_expires = {**base, "signatureVersion": "3"}
        async with http.get(_signed_url(sim, no_expires, sim.secret_key)) as r:
            assert r.status == 401


async def test_expired_requests_reach_the_client_as_unauthenticated(sim: CloudStackSimulator) -> None:
    async with CloudStackClient(sim.settings()) as client:
        # cs signs with expires = now (whole seconds): already past when the simulator checks it
        client._cs.expiration = timedelta(seconds=0)
        with pytest.raises(CloudStackAuthError):
            await client.list_zones()


async def test_unknown_command_is_told_apart_from_bad_keys(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    """Current CloudStack answers 401 for a command it does not know (ApiServer.verifyRequest), exactly as for bad
    keys: the client asks listCapabilities with the same keys to tell the two apart."""
    with pytest.raises(CloudStackUnknownCommand) as info:
        await client.request("listKubernetesClusters")
    err = info.value
    assert err.category is Category.UNIMPLEMENTED and err.reason == "CLOUDSTACK_UNKNOWN_COMMAND"
    assert err.metadata["cloudstack_errorcode"] == "401" and err.http_status == 401
    assert "does not offer listKubernetesClusters" in err.message and "keys" not in err.message
    assert sim.state.request_count("listKubernetesClusters") == 1  # not retried
    assert sim.state.request_count("listCapabilities") == 1  # the probe
    # with wrong keys the probe fails too: the operator is told to check the keys
    async with CloudStackClient(sim.settings(secret_key="wrong")) as bad:
        with pytest.raises(CloudStackAuthError, match="check the API key"):
            await bad.request("listKubernetesClusters")


async def test_older_releases_432_for_an_unknown_command_is_understood() -> None:
    err = from_cloudstack_error(
        {"errorcode": 432, "errortext": "The given command:listFoos does not exist or it is not available for user"},
        command="listFoos",
        http_status=432,
    )
    assert isinstance(err, CloudStackUnknownCommand) and err.category is Category.UNIMPLEMENTED


async def test_admin_command_for_a_user_account_is_not_a_key_problem(tmp_path: Path) -> None:
    sim = CloudStackSimulator(tmp_path / "s", seed_config={"roletype": "User"})
    async with sim, CloudStackClient(sim.settings()) as client:
        with pytest.raises(CloudStackUnknownCommand) as info:
            await client.request("listConfigurations", fetch_list=True)
        assert "either does not exist, is not available for user" in info.value.metadata["cloudstack_errortext"]
        assert sim.state.request_count("listCapabilities") == 0  # the text alone says it
        assert await client.list_zones()  # the keys work


async def test_retryable_530_is_retried(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    sim.faults.fail_command("listVolumes", 530, "Unable to acquire lock on the volume table, try again", times=2)
    volumes = await client.list_volumes()
    assert len(volumes) == 1  # the OMA root
    assert sim.state.request_count("listVolumes") == 3


async def test_retries_give_up_after_the_attempts(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    sim.faults.fail_command("listZones", 530, "Service temporarily unavailable", times=None)
    with pytest.raises(CloudStackUnavailable) as info:
        await client.list_zones()
    assert info.value.category is Category.UNAVAILABLE and is_transient(info.value)
    assert sim.state.request_count("listZones") == client.settings.retry_attempts


async def test_431_is_never_retried(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    sim.faults.fail_command("createVolume", 431, "Invalid parameter size", cserrorcode=4350, times=None)
    with pytest.raises(CloudStackParamError) as info:
        await client.create_volume("x", GIB)
    assert not is_transient(info.value)
    assert info.value.metadata["cloudstack_cserrorcode"] == "4350"
    assert sim.state.request_count("createVolume") == 1


async def test_plain_530_is_internal_and_not_retried(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    sim.faults.fail_command("attachVolume", 530, "Failed to attach volume: NPE", times=None)
    vol = await client.create_volume("x", GIB)
    with pytest.raises(CloudStackInternalError) as info:
        await client.attach_volume_to_oma(vol.id)
    assert info.value.category is Category.INTERNAL and not is_transient(info.value)
    assert sim.state.request_count("attachVolume") == 1


async def test_failed_job_reaches_the_adapter(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    vol = await client.create_volume("x", GIB)
    sim.faults.fail_command("attachVolume", 533, "Insufficient capacity on primary storage", in_job=True)
    with pytest.raises(Exception) as info:
        await client.attach_volume_to_oma(vol.id)
    err = info.value
    assert getattr(err, "category", None) is Category.RESOURCE_EXHAUSTED
    assert err.metadata["cloudstack_errorcode"] == "533"  # type: ignore[attr-defined]
    assert err.jobid  # type: ignore[attr-defined]
    assert sim.state.volumes[vol.id].get("virtualmachineid") is None


async def test_connection_reset_retried_for_reads_not_for_writes(
    client: CloudStackClient, sim: CloudStackSimulator
) -> None:
    sim.faults.drop_connection("listZones")
    assert len(await client.list_zones()) == 1
    assert sim.state.request_count("listZones") == 2

    sim.faults.drop_connection("createVolume")
    with pytest.raises(CloudStackUnavailable):
        await client.create_volume("maybe-created", GIB)
    assert sim.state.request_count("createVolume") == 1  # not repeated: it might have been done


async def test_connection_refused_is_unavailable(tmp_path: Path, sim: CloudStackSimulator) -> None:
    settings = sim.settings(url="http://127.0.0.1:9/client/api", retry_attempts=2)
    async with CloudStackClient(settings) as client:
        with pytest.raises(CloudStackUnavailable) as info:
            await client.list_zones()
    assert info.value.category is Category.UNAVAILABLE and is_transient(info.value)


async def test_slow_job_still_completes(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    sim.faults.slow_job("createVolume", 0.5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    vol = await client.create_volume("slow", GIB)
    assert loop.time() - start >= 0.5
    assert vol.state == "Allocated"
    assert sim.state.request_count("queryAsyncJobResult") >= 3  # it polled meanwhile


async def test_job_timeout_is_deadline_exceeded(sim: CloudStackSimulator) -> None:
    sim.faults.hang_job("deployVirtualMachine")
    async with CloudStackClient(sim.settings(async_job_timeout_s=0.5)) as client:
        offering = (await client.list_service_offerings())[0]
        template = (await client.list_templates())[0]
        network = (await client.list_networks())[0]
        with pytest.raises(CloudStackJobTimeout) as info:
            await client.deploy_vm("hung", offering.id, template.id, sim.zone_id, [network.id], start=True)
    err = info.value
    assert err.category is Category.DEADLINE_EXCEEDED and err.reason == "CLOUDSTACK_JOB_TIMEOUT"
    assert err.jobid and sim.state.jobs[err.jobid]["jobstatus"] == 0
    assert err.metadata["command"] == "deployVirtualMachine"


async def test_cancelling_stops_polling(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    sim.faults.hang_job("createVolume")
    task = asyncio.create_task(client.create_volume("cancel-me", GIB))
    for _ in range(500):
        if sim.state.request_count("queryAsyncJobResult") >= 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    polls = sim.state.request_count("queryAsyncJobResult")
    await asyncio.sleep(0.3)  # several poll intervals
    assert sim.state.request_count("queryAsyncJobResult") == polls


async def test_attach_without_device(client: CloudStackClient, sim: CloudStackSimulator) -> None:
    sim.faults.attach_without_device()
    vol = await client.create_volume("ghost", GIB)
    attached = await client.attach_volume_to_oma(vol.id)
    assert attached.virtual_machine_id == sim.oma_vm_id  # CloudStack says attached...
    assert not device_path(sim.device_root, vol.id).exists()  # ...but the guest sees nothing
    other = await client.create_volume("normal", GIB)
    await client.attach_volume_to_oma(other.id)
    assert device_path(sim.device_root, other.id).is_symlink()  # the fault was for one attach


async def test_secret_never_logged(sim: CloudStackSimulator) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m) + repr(m.record["extra"])), level="DEBUG")
    try:
        settings = sim.settings(http_method="get")
        assert sim.secret_key not in repr(settings)
        async with CloudStackClient(settings) as client:
            sim.faults.fail_command("listZones", 530, "try again later", times=1)
            await client.list_zones()
            vol = await client.create_volume("logged", GIB)
            await client.attach_volume_to_oma(vol.id)
            with pytest.raises(CloudStackParamError) as info:
                await client.attach_volume_to_oma(vol.id)
            assert sim.secret_key not in str(info.value) and sim.secret_key not in repr(info.value.metadata)
        async with CloudStackClient(sim.settings(secret_key="wrong-secret-zz")) as bad:
            with pytest.raises(CloudStackAuthError):
                await bad.list_zones()
    finally:
        logger.remove(sink)
    text = "\n".join(lines)
    assert "retry" in text and "attachVolume" in text  # we did capture the adapter's logs
    assert sim.secret_key not in text
    assert "wrong-secret-zz" not in text


def test_error_mapping_table() -> None:
    cases = {
        401: Category.UNAUTHENTICATED,
        431: Category.INVALID_ARGUMENT,
        432: Category.FAILED_PRECONDITION,
        437: Category.RESOURCE_EXHAUSTED,
        531: Category.PERMISSION_DENIED,
        533: Category.RESOURCE_EXHAUSTED,
        534: Category.UNAVAILABLE,
        536: Category.FAILED_PRECONDITION,
        530: Category.INTERNAL,
        503: Category.UNAVAILABLE,
    }
    for code, category in cases.items():
        err = from_cloudstack_error({"errorcode": code, "errortext": "x"}, command="c")
        assert err.category is category, code
    assert from_cloudstack_error({"errorcode": 530, "errortext": "timed out"}, command="c").transient
    assert not from_cloudstack_error({"errorcode": 431, "errortext": "try again"}, command="c").transient


async def test_a_job_cloudstack_forgot_is_lost_not_a_missing_resource(
    client: CloudStackClient, sim: CloudStackSimulator
) -> None:
    """CloudStack that no longer knows an async job (its management server restarted, or it purged the job) says
    nothing about the resource the job was about: a destroy whose job was forgotten raises CloudStackJobLost, and the
    VM is still there. Found by the workflow kill harness: a cleanup counted its test VM destroyed and left it."""
    offering = (await client.list_service_offerings())[0]
    template = (await client.list_templates())[0]
    network = (await client.list_networks())[0]
    vm = await client.deploy_vm("kept", offering.id, template.id, sim.zone_id, [network.id], start=False)
    sim.faults.hang_job("destroyVirtualMachine")
    polls = sim.state.request_count("queryAsyncJobResult")
    task = asyncio.create_task(client.destroy_vm(vm.id))
    await until(lambda: sim.state.request_count("queryAsyncJobResult") > polls, "the destroy job to be polled")
    (job_id,) = [j for j, r in sim.state.jobs.items() if r.get("jobinstanceid") == vm.id and r["jobstatus"] == 0]
    del sim.state.jobs[job_id]  # forgotten, as by a management server that lost it
    with pytest.raises(CloudStackJobLost) as info:
        await task
    err = info.value
    assert err.category is Category.UNAVAILABLE and err.reason == "CLOUDSTACK_JOB_LOST"
    assert err.jobid == job_id and err.metadata["command"] == "destroyVirtualMachine"
    assert "whether destroyVirtualMachine took effect is unknown" in err.message
    assert (await client.get_vm(vm.id)).id == vm.id
