"""The CloudStack adapter the workflows call: typed, async, with deadlines and retries.

Requests are signed and sent by the `cs` package's `AIOCloudStack` (aiohttp). Every failure becomes a
`CloudStackError` (errors.py), a DomainError whose category the gRPC layer maps to a status code.

Retries: a transient failure (connection refused/reset, HTTP 5xx, 429/534, 530 with a retryable text) is retried
with exponential backoff and jitter, up to `settings.retry_attempts`. A request that may have reached CloudStack
without an answer (connection reset or read timeout after sending) is retried only for read-only commands
(list*, query*): retrying a createVolume blindly could create a second volume. A 431 is never retried.

Async jobs: the command returns a job id; `wait_for_job` polls queryAsyncJobResult every
`poll_interval_s` until the job ends or `async_job_timeout_s` passes (CloudStackJobTimeout, DEADLINE_EXCEEDED); a job
CloudStack no longer knows is CloudStackJobLost (UNAVAILABLE), never the NotFound of the resource it was about.
Cancelling the awaiting task stops the polling at once; the job itself keeps running in CloudStack (CloudStack
has no API to cancel it), so the caller must reconcile later.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import aiohttp
from cs import AIOCloudStack, CloudStackApiException, CloudStackException
from loguru import logger

from oma_server import metrics
from oma_server.cloudstack.config import CloudStackSettings
from oma_server.cloudstack.errors import (
    CloudStackAuthError,
    CloudStackBadResponse,
    CloudStackError,
    CloudStackJobLost,
    CloudStackJobTimeout,
    CloudStackNotFound,
    CloudStackUnavailable,
    from_cloudstack_error,
    from_transport_error,
    unknown_command,
)
from oma_server.cloudstack.models import (
    AsyncJob,
    DiskOffering,
    JobStatus,
    Network,
    NicSpec,
    ServiceOffering,
    Snapshot,
    Template,
    VirtualMachine,
    Volume,
    Zone,
    bytes_to_gib_ceil,
)
from oma_server.errors import FailedPrecondition, InvalidArgument

_READ_ONLY_PREFIXES = ("list", "query", "get")
#: a command every account may call: when it works with our keys, a 401 for another command means that command
#: is not offered to us, not that the keys are wrong (ApiServer.verifyRequest answers both with 401)
KEYS_PROBE_COMMAND = "listCapabilities"

#: friendly filter names accepted by list_volumes / list_vms, mapped to CloudStack parameter names
_FILTER_ALIASES = {
    "vm_id": "virtualmachineid",
    "virtual_machine_id": "virtualmachineid",
    "zone_id": "zoneid",
    "volume_id": "volumeid",
    "network_id": "networkid",
    "template_id": "templateid",
}

NetworkArg = NicSpec | tuple[str] | tuple[str, str | None] | tuple[str, str | None, str | None] | str


def _filters(filters: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in filters.items():
        if value is None:
            continue
        out[_FILTER_ALIASES.get(key, key)] = value
    return out


def _nic_spec(entry: NetworkArg) -> NicSpec:
    if isinstance(entry, NicSpec):
        return entry
    if isinstance(entry, str):
        return NicSpec(entry)
    network_id, *rest = entry
    ip = rest[0] if rest else None
    mac = rest[1] if len(rest) > 1 else None
    return NicSpec(network_id, ip, mac)


class CloudStackClient:
    """Async CloudStack adapter. Use `async with open_client(settings) as cs:` or call `close()`."""

    def __init__(self, settings: CloudStackSettings, *, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        if session is None:
            timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
            connector = aiohttp.TCPConnector(ssl=settings.verify_tls)
            session = aiohttp.ClientSession(timeout=timeout, connector=connector)
            self._owns_session = True
        else:
            self._owns_session = False
        self._session = session
        self._cs = AIOCloudStack(
            endpoint=settings.url,
            key=settings.api_key,
            secret=settings.secret_key,
            timeout=max(1, int(settings.timeout_s)),
            method=settings.http_method,
            session=session,
            retry=0,  # retries are ours: typed, with jitter, never for a 431
            fetch_result=False,  # async jobs are awaited by wait_for_job
            dangerous_no_tls_verify=not settings.verify_tls,
        )
        self._zone_id: str | None = None
        self._custom_offering: DiskOffering | None = None
        self._log = logger.bind(cloudstack_url=settings.url)

    def __repr__(self) -> str:
        return f"<CloudStackClient {self.settings.url}>"

    async def close(self) -> None:
        if self._owns_session and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> CloudStackClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- transport ---------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        cap = min(self.settings.retry_max_delay_s, self.settings.retry_base_delay_s * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    async def _once(self, command: str, fetch_list: bool, params: dict[str, Any]) -> tuple[Any, bool]:
        """One request. Returns (answer, _) or raises (CloudStackError, whether a retry is safe)."""
        try:
            return await getattr(self._cs, command)(fetch_list=fetch_list, **params), True
        except CloudStackApiException as e:
            status = getattr(e.response, "status", None)
            raise _Failed(from_cloudstack_error(e.error, command=command, http_status=status), True) from e
        except CloudStackException as e:
            status = getattr(e.response, "status", None)
            detail = "; ".join(str(a) for a in e.args)
            if isinstance(status, int) and (status >= 500 or status == 429):
                err: CloudStackError = CloudStackUnavailable(
                    f"CloudStack answered {command} with HTTP {status} and no API response: {detail}",
                    command=command,
                    http_status=status,
                )
            else:
                err = CloudStackBadResponse(
                    f"CloudStack answered {command} with something that is not an API response "
                    f"(HTTP {status}): {detail}",
                    command=command,
                    http_status=status,
                )
            raise _Failed(err, True) from e
        except aiohttp.ClientConnectorError as e:  # nothing was sent
            raise _Failed(from_transport_error(e, command=command), True) from e
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            # the request may have reached CloudStack: only read-only commands are safe to repeat
            raise _Failed(from_transport_error(e, command=command), command.startswith(_READ_ONLY_PREFIXES)) from e

    async def request(self, command: str, *, fetch_list: bool = False, **params: Any) -> Any:
        """One CloudStack API command (unwrapped answer), with retries of transient failures."""
        log = self._log.bind(cloudstack_command=command)
        attempts = self.settings.retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                with metrics.cloudstack_request(command):
                    answer, _ = await self._once(command, fetch_list, params)
                return answer
            except _Failed as failed:
                err = failed.error
                if isinstance(err, CloudStackAuthError) and command != KEYS_PROBE_COMMAND and await self._keys_work():
                    err = unknown_command(command, err.errortext, errorcode=err.errorcode)
                if not (err.transient and failed.retry_safe) or attempt == attempts:
                    log.bind(reason=err.reason).warning("CloudStack {} failed: {}", command, err.message)
                    raise err from failed.__cause__
                delay = self._backoff(attempt)
                log.bind(reason=err.reason, attempt=attempt).warning(
                    "CloudStack {} failed transiently ({}); retry {}/{} in {:.2f}s",
                    command,
                    err.message,
                    attempt,
                    attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _keys_work(self) -> bool:
        try:
            await self._once(KEYS_PROBE_COMMAND, False, {})
        except _Failed:
            return False
        return True

    async def _list(self, command: str, **params: Any) -> list[dict[str, Any]]:
        answer = await self.request(command, fetch_list=True, **_filters(params))
        if not isinstance(answer, list):
            raise CloudStackBadResponse(f"CloudStack {command} did not answer a list", command=command)
        return answer

    # ---- async jobs --------------------------------------------------------------------------------
    async def query_job(self, job_id: str) -> AsyncJob:
        raw = await self.request("queryAsyncJobResult", jobid=job_id)
        try:
            return AsyncJob.from_api(raw)
        except (KeyError, TypeError, ValueError) as e:
            raise CloudStackBadResponse(
                f"queryAsyncJobResult for job {job_id} answered an unexpected document",
                command="queryAsyncJobResult",
                jobid=job_id,
            ) from e

    async def wait_for_job(self, job_id: str, *, command: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The job's `jobresult` once it succeeded; its error as a CloudStackError if it failed."""
        timeout_s = timeout_s if timeout_s is not None else self.settings.async_job_timeout_s
        log = self._log.bind(cloudstack_command=command, cloudstack_job_id=job_id)
        log.debug("waiting for CloudStack job (timeout {}s)", timeout_s)
        polls = 0
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                while True:
                    try:
                        job = await self.query_job(job_id)
                    except CloudStackNotFound as exc:
                        log.warning("CloudStack no longer knows the job: {}", exc.message)
                        raise CloudStackJobLost(
                            f"CloudStack no longer knows {command} job {job_id} (its management server restarted or "
                            f"purged the job), so whether {command} took effect is unknown; look at the resource "
                            "before trying again",
                            command=command,
                            jobid=job_id,
                            errortext=exc.errortext,
                        ) from exc
                    polls += 1
                    if job.status is JobStatus.SUCCEEDED:
                        log.debug("CloudStack job succeeded after {} polls", polls)
                        return job.result
                    if job.status is JobStatus.FAILED:
                        payload = dict(job.result)
                        payload.setdefault("errorcode", job.result_code)
                        err = from_cloudstack_error(payload, command=command, jobid=job_id)
                        log.bind(reason=err.reason).warning("CloudStack job failed: {}", err.message)
                        raise err
                    await asyncio.sleep(self.settings.poll_interval_s)
        except TimeoutError:
            if not deadline.expired():
                raise
            log.warning("CloudStack job did not finish within {}s; it may still complete", timeout_s)
            raise CloudStackJobTimeout(
                f"CloudStack {command} job {job_id} did not finish within {timeout_s:g}s; it may still complete "
                "in CloudStack, reconcile before retrying",
                command=command,
                jobid=job_id,
                timeout_s=timeout_s,
            ) from None
        except asyncio.CancelledError:
            log.info("stopped waiting for CloudStack job (cancelled); the job itself continues in CloudStack")
            raise

    async def _run_async(self, command: str, **params: Any) -> dict[str, Any]:
        submitted = await self.request(command, **params)
        job_id = submitted.get("jobid") if isinstance(submitted, dict) else None
        if not job_id:
            raise CloudStackBadResponse(f"CloudStack {command} returned no job id", command=command)
        self._log.bind(cloudstack_command=command, cloudstack_job_id=job_id).debug("CloudStack job submitted")
        return await self.wait_for_job(str(job_id), command=command)

    @staticmethod
    def _item(result: dict[str, Any], key: str, command: str) -> dict[str, Any]:
        item = result.get(key)
        if not isinstance(item, dict):
            raise CloudStackBadResponse(f"CloudStack {command} job result has no {key!r}", command=command)
        return item

    # ---- catalogue ---------------------------------------------------------------------------------
    async def list_zones(self, name: str | None = None) -> list[Zone]:
        return [Zone.from_api(z) for z in await self._list("listZones", name=name)]

    async def zone_id(self) -> str:
        """The zone to work in: settings.zone (an id or a name), or the only zone there is."""
        if self._zone_id is not None:
            return self._zone_id
        zones = await self.list_zones()
        wanted = self.settings.zone
        if wanted:
            match = [z for z in zones if wanted in (z.id, z.name)]
            if not match:
                raise CloudStackNotFound(f"CloudStack zone {wanted!r} does not exist", command="listZones")
            self._zone_id = match[0].id
        elif len(zones) == 1:
            self._zone_id = zones[0].id
        else:
            raise FailedPrecondition(
                f"CloudStack has {len(zones)} zones; set OMA_CLOUDSTACK_ZONE to choose one",
                reason="CLOUDSTACK_ZONE_AMBIGUOUS",
            )
        return self._zone_id

    async def list_service_offerings(self, name: str | None = None) -> list[ServiceOffering]:
        rows = await self._list("listServiceOfferings", name=name)
        return [ServiceOffering.from_api(r) for r in rows]

    async def list_disk_offerings(self, name: str | None = None) -> list[DiskOffering]:
        return [DiskOffering.from_api(r) for r in await self._list("listDiskOfferings", name=name)]

    async def list_networks(self, zone_id: str | None = None, name: str | None = None) -> list[Network]:
        rows = await self._list("listNetworks", zoneid=zone_id, name=name)
        return [Network.from_api(r) for r in rows]

    async def list_templates(
        self, template_filter: str = "executable", zone_id: str | None = None, name: str | None = None
    ) -> list[Template]:
        rows = await self._list("listTemplates", templatefilter=template_filter, zoneid=zone_id, name=name)
        return [Template.from_api(r) for r in rows]

    async def custom_disk_offering(self) -> DiskOffering:
        """The disk offering volumes of any size are created with (the first custom-size one)."""
        if self._custom_offering is None:
            offerings = [o for o in await self.list_disk_offerings() if o.is_customized]
            if not offerings:
                raise FailedPrecondition(
                    "CloudStack has no custom-size disk offering; create one (customized=true) so volumes can "
                    "match the source disks",
                    reason="CLOUDSTACK_NO_CUSTOM_DISK_OFFERING",
                )
            self._custom_offering = offerings[0]
        return self._custom_offering

    # ---- volumes -----------------------------------------------------------------------------------
    async def create_volume(
        self,
        name: str,
        size_bytes: int,
        disk_offering_id: str | None = None,
        zone_id: str | None = None,
    ) -> Volume:
        """A DATADISK of at least `size_bytes`. CloudStack sizes volumes in whole GiB, so the size is rounded
        up to the next GiB (the volume may be up to 1 GiB - 1 byte larger than asked)."""
        if size_bytes <= 0:
            raise InvalidArgument(f"volume size must be positive, not {size_bytes}", reason="INVALID_VOLUME_SIZE")
        zone = zone_id or await self.zone_id()
        params: dict[str, Any] = {"name": name, "zoneid": zone}
        if disk_offering_id is None:
            offering = await self.custom_disk_offering()
        else:
            found = await self._list("listDiskOfferings", id=disk_offering_id)
            if not found:
                raise CloudStackNotFound(f"disk offering {disk_offering_id} does not exist", command="createVolume")
            offering = DiskOffering.from_api(found[0])
        params["diskofferingid"] = offering.id
        if offering.is_customized:
            params["size"] = bytes_to_gib_ceil(size_bytes)
        elif offering.disk_size_bytes < size_bytes:
            raise InvalidArgument(
                f"disk offering {offering.name} is {offering.disk_size_bytes} bytes, smaller than {size_bytes}",
                reason="CLOUDSTACK_OFFERING_TOO_SMALL",
                disk_offering_id=offering.id,
            )
        result = await self._run_async("createVolume", **params)
        return Volume.from_api(self._item(result, "volume", "createVolume"))

    async def get_volume(self, volume_id: str) -> Volume:
        rows = await self._list("listVolumes", id=volume_id)
        if not rows:
            raise CloudStackNotFound(
                f"CloudStack volume {volume_id} does not exist", command="listVolumes", volume_id=volume_id
            )
        return Volume.from_api(rows[0])

    async def list_volumes(self, **filters: Any) -> list[Volume]:
        """Volumes matching CloudStack listVolumes filters (virtualmachineid/vm_id, type, name, zoneid...)."""
        return [Volume.from_api(r) for r in await self._list("listVolumes", **filters)]

    async def resize_volume(self, volume_id: str, size_bytes: int, *, shrink_ok: bool = False) -> Volume:
        """Resize to at least `size_bytes` (rounded up to whole GiB)."""
        result = await self._run_async(
            "resizeVolume", id=volume_id, size=bytes_to_gib_ceil(size_bytes), shrinkok=shrink_ok or None
        )
        return Volume.from_api(self._item(result, "volume", "resizeVolume"))

    async def delete_volume(self, volume_id: str) -> None:
        await self.request("deleteVolume", id=volume_id)

    async def attach_volume(self, volume_id: str, vm_id: str, device_id: int | None = None) -> Volume:
        """Attach to a VM; device_id 0 attaches as the ROOT disk of a stopped VM without one."""
        result = await self._run_async("attachVolume", id=volume_id, virtualmachineid=vm_id, deviceid=device_id)
        return Volume.from_api(self._item(result, "volume", "attachVolume"))

    @property
    def oma_vm_id(self) -> str:
        """The OMA's own VM in CloudStack (OMA_CLOUDSTACK_OMA_VM_ID)."""
        if not self.settings.oma_vm_id:
            raise FailedPrecondition(
                "the OMA's own CloudStack VM id is not configured (set OMA_CLOUDSTACK_OMA_VM_ID)",
                reason="CLOUDSTACK_OMA_VM_UNKNOWN",
            )
        return self.settings.oma_vm_id

    async def attach_volume_to_oma(self, volume_id: str) -> Volume:
        return await self.attach_volume(volume_id, self.oma_vm_id)

    async def detach_volume(self, volume_id: str) -> Volume:
        result = await self._run_async("detachVolume", id=volume_id)
        return Volume.from_api(self._item(result, "volume", "detachVolume"))

    # ---- snapshots ---------------------------------------------------------------------------------
    async def create_volume_snapshot(self, volume_id: str, name: str | None = None) -> Snapshot:
        result = await self._run_async("createSnapshot", volumeid=volume_id, name=name)
        return Snapshot.from_api(self._item(result, "snapshot", "createSnapshot"))

    async def list_snapshots(self, volume_id: str | None = None, snapshot_id: str | None = None) -> list[Snapshot]:
        rows = await self._list("listSnapshots", volumeid=volume_id, id=snapshot_id)
        return [Snapshot.from_api(r) for r in rows]

    async def revert_snapshot(self, snapshot_id: str) -> Snapshot:
        """Restore the volume to the snapshot. CloudStack requires the volume detached or its VM stopped."""
        result = await self._run_async("revertSnapshot", id=snapshot_id)
        return Snapshot.from_api(self._item(result, "snapshot", "revertSnapshot"))

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._run_async("deleteSnapshot", id=snapshot_id)

    # ---- virtual machines --------------------------------------------------------------------------
    async def deploy_vm(
        self,
        name: str,
        service_offering_id: str,
        template_id: str,
        zone_id: str,
        networks: Sequence[NetworkArg],
        start: bool = False,
        root_disk_size: int | None = None,
        display_name: str | None = None,
    ) -> VirtualMachine:
        """Deploy a VM; `networks` are (network_id, ip=None, mac=None) in NIC order (the first is default);
        root_disk_size in bytes (rounded up to GiB)."""
        nics = [_nic_spec(n) for n in networks]
        if not nics:
            raise InvalidArgument("a VM needs at least one network", reason="CLOUDSTACK_NO_NETWORK")
        ip_to_network = []
        for nic in nics:
            entry = {"networkid": nic.network_id}
            if nic.ip:
                entry["ip"] = nic.ip
            if nic.mac:
                entry["mac"] = nic.mac
            ip_to_network.append(entry)
        result = await self._run_async(
            "deployVirtualMachine",
            name=name,
            displayname=display_name or name,
            serviceofferingid=service_offering_id,
            templateid=template_id,
            zoneid=zone_id,
            iptonetworklist=ip_to_network,
            startvm=start,
            rootdisksize=bytes_to_gib_ceil(root_disk_size) if root_disk_size else None,
        )
        return await self._vm_with_volumes(self._item(result, "virtualmachine", "deployVirtualMachine"))

    async def start_vm(self, vm_id: str) -> VirtualMachine:
        result = await self._run_async("startVirtualMachine", id=vm_id)
        return await self._vm_with_volumes(self._item(result, "virtualmachine", "startVirtualMachine"))

    async def stop_vm(self, vm_id: str, forced: bool = False) -> VirtualMachine:
        result = await self._run_async("stopVirtualMachine", id=vm_id, forced=forced or None)
        return await self._vm_with_volumes(self._item(result, "virtualmachine", "stopVirtualMachine"))

    async def destroy_vm(self, vm_id: str, expunge: bool = True) -> None:
        """Destroy (and by default expunge: the ROOT volume goes, data disks are detached and kept). A VM that is
        already gone counts as destroyed.

        The job result is not read: with expunge, 4.18.1 to 4.20.1 answer `{"null": {...}}` and later releases
        `{"virtualmachine": {...}}`, both without id, name or state (docs/cloudstack.md); the job's success is
        the answer."""
        try:
            await self._run_async("destroyVirtualMachine", id=vm_id, expunge=expunge)
        except CloudStackNotFound:
            self._log.bind(vm_id=vm_id).info("CloudStack VM {} is already gone; counted as destroyed", vm_id)

    async def _vm_with_volumes(self, raw: dict[str, Any]) -> VirtualMachine:
        volumes = tuple(await self.list_volumes(virtualmachineid=raw["id"]))
        return VirtualMachine.from_api(raw, volumes)

    async def get_vm(self, vm_id: str, with_volumes: bool = True) -> VirtualMachine:
        rows = await self._list("listVirtualMachines", id=vm_id)
        if not rows:
            raise CloudStackNotFound(
                f"CloudStack VM {vm_id} does not exist", command="listVirtualMachines", vm_id=vm_id
            )
        return await self._vm_with_volumes(rows[0]) if with_volumes else VirtualMachine.from_api(rows[0])

    async def list_vms(self, with_volumes: bool = False, **filters: Any) -> list[VirtualMachine]:
        rows = await self._list("listVirtualMachines", **filters)
        if not with_volumes:
            return [VirtualMachine.from_api(r) for r in rows]
        return [await self._vm_with_volumes(r) for r in rows]


class _Failed(Exception):
    """Internal: a failed attempt and whether repeating it is safe."""

    def __init__(self, error: CloudStackError, retry_safe: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_safe = retry_safe
