"""CloudStack's API as the client sends it: signed requests, typed failures, retries, async jobs.

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
from typing import Any, Self

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
from oma_server.cloudstack.models import AsyncJob, JobStatus

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


def api_filters(given: dict[str, Any]) -> dict[str, Any]:
    """Friendly filter names mapped to CloudStack parameter names; unset (None) filters left out."""
    out: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        out[_FILTER_ALIASES.get(key, key)] = value
    return out


class CloudStackTransport:
    """The session, the signed requests and their retries, async jobs; `CloudStackClient` adds the resources."""

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
        self._log = logger.bind(cloudstack_url=settings.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.settings.url}>"

    async def close(self) -> None:
        if self._owns_session and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> Self:
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
        answer = await self.request(command, fetch_list=True, **api_filters(params))
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


class _Failed(Exception):
    """Internal: a failed attempt and whether repeating it is safe."""

    def __init__(self, error: CloudStackError, retry_safe: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_safe = retry_safe
