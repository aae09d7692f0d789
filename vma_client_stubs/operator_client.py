"""The Python SDK of the OMA's operator API: an async client with the parts every caller would otherwise write.

```python
from vma_client_stubs.operator_client import OperatorClient, TlsConfig

async with OperatorClient("oma.example:50051", tls=TlsConfig.from_files(ca="ca.pem"), token="…") as oma:
    enrolled = await oma.enroll_appliance("vma-east-1")
    async for vm in oma.iter_vm_contexts():
        print(vm.name, vm.status)
    async for update in oma.watch_jobs():          # resumes by itself across cuts and OMA restarts
        print(update.kind, update.revision)
```

- **TLS** with the OMA's CA (and a client certificate for mutual TLS): `TlsConfig`. Without it the channel is
  plaintext — for an oma-server started with `--insecure` (TLS is its default).
- **Auth**: an operator token sent as `authorization: Bearer <token>` on every call (a callable is asked each call,
  so a token can rotate).
- **Retries**: unary calls answered UNAVAILABLE are retried by gRPC itself (a service-config retry policy:
  exponential backoff with jitter); no other code is retried. Streams are resumed instead (below).
- **Pagination**: `iter_appliances`, `iter_vm_contexts`, `iter_replication_jobs`, `iter_job_log` follow
  `next_page_token`; `paginate` does it for any List call.
- **Watch with automatic resume**: `watch_job` / `watch_jobs` resume from the revision of the last CHANGE, SYNCED or
  PROGRESS_NOTIFY after a cut (UNAVAILABLE, a server shutdown) and watch from 0 again (a new snapshot) when the OMA
  no longer holds that revision (OUT_OF_RANGE).
- **Errors**: `error_info(error)` is the `google.rpc.ErrorInfo` every OMA refusal carries (reason, metadata);
  `error_details(error)` adds the typed details: `field_violations` (BadRequest), `precondition_violations`
  (`failed_checks()`, `active_job_id()`), `resources` (ResourceInfo).
- **Safe retries**: every mutating request takes a `request_id`; resending the same request with it after a lost
  answer gets the first answer (and changes nothing).

Anything else: the generated stubs are attributes (`appliances`, `vm_contexts`, `replication`, `jobs`, `failover`,
`volumes`, `exports`, `network_mappings`) on one `grpc.aio` channel (`channel`). A runnable example is
`python -m vma_client_stubs.examples.watch_jobs`.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from oma.v1 import (
    appliance_pb2,
    appliance_pb2_grpc,
    failover_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    storage_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from vma_client_stubs.connection import TokenSource, bearer_interceptors
from vma_client_stubs.errors import ErrorDetails, error_details_of, error_info_of

#: The ErrorInfo of a failed call (reason, domain "oma.control-plane", metadata), or None (a connection failure).
error_info = error_info_of
#: Every detail of a failed call, decoded: ErrorInfo, the bad request's fields, failed preconditions (readiness
#: checks, the active job), the resource it is about.
error_details = error_details_of

T = TypeVar("T")
PAGE_SIZE = 1000
# The revisions a watch may resume from (a SNAPSHOT's revision is its job's, not the stream's).
RESUME_POINTS = (job_pb2.UPDATE_KIND_CHANGE, job_pb2.UPDATE_KIND_SYNCED, job_pb2.UPDATE_KIND_PROGRESS_NOTIFY)


@dataclass(frozen=True)
class Enrollment:
    """An enrolled appliance and what it needs to join: its one-time join token and the OMA's CA fingerprint
    (`vma_client_stubs.identity.join` trades them for its certificate). `credential` is set only by an OMA that allows
    the deprecated credential hello."""

    appliance_id: str
    credential: str
    appliance: appliance_pb2.Appliance
    join_token: str = ""
    ca_fingerprint: str = ""


@dataclass(frozen=True)
class TlsConfig:
    """TLS material in PEM. `ca` checks the OMA's certificate against the OMA's CA instead of the system's;
    `cert` and `key` are a client certificate for mutual TLS; `server_name` is the name the OMA's certificate must
    carry when it differs from the target's host."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str = ""

    @classmethod
    def from_files(
        cls, ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None, **kw: Any
    ) -> TlsConfig:
        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(read(ca), read(cert), read(key), **kw)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of unary calls answered UNAVAILABLE, done by gRPC (grpc's service-config retry policy).

    gRPC waits a random time up to initial_backoff_s * multiplier^(n-1), capped at max_backoff_s, before attempt
    n + 1 (full jitter)."""

    max_attempts: int = 5  # gRPC caps this at 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    codes: Sequence[str] = field(default=("UNAVAILABLE",))

    def service_config(self) -> str:
        policy = {
            "maxAttempts": max(2, min(5, self.max_attempts)),
            "initialBackoff": f"{self.initial_backoff_s:g}s",
            "maxBackoff": f"{self.max_backoff_s:g}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": list(self.codes),
        }
        return json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": policy}]})


def describe_error(error: grpc.RpcError) -> str:
    """One line for a failed call, as omactl prints it: `NOT_FOUND: ... (APPLIANCE_NOT_FOUND)`."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    details: ErrorDetails = error_details(error)
    text = f"{code.name}: {error.details()}"  # type: ignore[attr-defined]
    return f"{text} ({details.reason})" if details.reason else text


class _Paged(Protocol):
    next_page_token: str


class OperatorClient:
    """Async client of the OMA's operator API on one channel. Use as `async with`."""

    def __init__(
        self,
        target: str,
        *,
        tls: TlsConfig | None = None,
        token: TokenSource | None = None,
        retry: RetryPolicy | None = RetryPolicy(),
        channel_credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
        timeout_s: float = 30.0,
        resume_backoff_s: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        """`target` is HOST:PORT; `tls` (or raw `channel_credentials`) makes the channel TLS; `token` is the operator
        token; `retry=None` turns retries off; `timeout_s` is every unary call's deadline; `resume_backoff_s` is the
        (first, longest) wait before a cut watch resumes."""
        self.target = target
        self.timeout_s = timeout_s
        self.resume_backoff_s = resume_backoff_s
        options = list(options or [])
        if retry is not None:
            options += [("grpc.enable_retries", 1), ("grpc.service_config", retry.service_config())]
        if tls is not None and tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        interceptors = bearer_interceptors(token) if token is not None else None
        credentials = tls.credentials() if tls is not None else channel_credentials
        if credentials is not None:
            self.channel = grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        self.appliances = appliance_pb2_grpc.ApplianceServiceStub(self.channel)
        self.vm_contexts = vm_context_pb2_grpc.VmContextServiceStub(self.channel)
        self.replication = replication_pb2_grpc.ReplicationServiceStub(self.channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)
        self.volumes = storage_pb2_grpc.VolumeServiceStub(self.channel)
        self.exports = storage_pb2_grpc.NbdExportServiceStub(self.channel)
        self.failover = failover_pb2_grpc.FailoverServiceStub(self.channel)
        self.network_mappings = failover_pb2_grpc.NetworkMappingServiceStub(self.channel)
        self.schedules = schedule_pb2_grpc.ScheduleServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> OperatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- appliances -------------------------------------------------------------------------------------------

    async def enroll_appliance(self, name: str, request_id: str = "") -> Enrollment:
        """Enrolls an appliance; its join token is returned only here. The request carries a request_id (a new one
        unless given), so gRPC's own retry of an UNAVAILABLE call, or the caller's repeat with the same id, enrolls
        once and gets the same token."""
        request = appliance_pb2.EnrollApplianceRequest(name=name, request_id=request_id or uuid.uuid4().hex)
        response = await self.appliances.EnrollAppliance(request, timeout=self.timeout_s)
        return Enrollment(
            response.appliance.id,
            response.credential,
            response.appliance,
            response.join_token,
            response.ca_fingerprint,
        )

    async def get_appliance(self, appliance_id: str) -> appliance_pb2.Appliance:
        response = await self.appliances.GetAppliance(
            appliance_pb2.GetApplianceRequest(id=appliance_id), timeout=self.timeout_s
        )
        return response.appliance

    async def revoke_appliance(self, appliance_id: str, request_id: str = "") -> appliance_pb2.Appliance:
        request = appliance_pb2.RevokeApplianceRequest(id=appliance_id, request_id=request_id or uuid.uuid4().hex)
        response = await self.appliances.RevokeAppliance(request, timeout=self.timeout_s)
        return response.appliance

    # -- pagination -------------------------------------------------------------------------------------------

    async def paginate(
        self, call: Callable[..., Awaitable[Any]], request: Message, items: Callable[[Any], Sequence[T]]
    ) -> AsyncIterator[T]:
        """Every item of a List call, page after page: `paginate(stub.ListX, ListXRequest(...), lambda r: r.xs)`."""
        request.page_size = request.page_size or PAGE_SIZE  # type: ignore[attr-defined]
        while True:
            page: _Paged = await call(request, timeout=self.timeout_s)
            for item in items(page):
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token  # type: ignore[attr-defined]

    def iter_appliances(self, page_size: int = PAGE_SIZE) -> AsyncIterator[appliance_pb2.Appliance]:
        request = appliance_pb2.ListAppliancesRequest(page_size=page_size)
        return self.paginate(self.appliances.ListAppliances, request, lambda r: r.appliances)

    def iter_vm_contexts(
        self, appliance_id: str = "", page_size: int = PAGE_SIZE
    ) -> AsyncIterator[vm_context_pb2.VmContext]:
        request = vm_context_pb2.ListVmContextsRequest(appliance_id=appliance_id, page_size=page_size)
        return self.paginate(self.vm_contexts.ListVmContexts, request, lambda r: r.vm_contexts)

    def iter_replication_jobs(
        self, vm_context_id: str = "", page_size: int = PAGE_SIZE
    ) -> AsyncIterator[replication_pb2.ReplicationJob]:
        request = replication_pb2.ListReplicationJobsRequest(vm_context_id=vm_context_id, page_size=page_size)
        return self.paginate(self.replication.ListReplicationJobs, request, lambda r: r.jobs)

    def iter_schedules(self, target_id: str = "", page_size: int = PAGE_SIZE) -> AsyncIterator[schedule_pb2.Schedule]:
        """Replication schedules (of one VM context when `target_id` is given), oldest first."""
        request = schedule_pb2.ListSchedulesRequest(target_id=target_id, page_size=page_size)
        return self.paginate(self.schedules.ListSchedules, request, lambda r: r.schedules)

    def iter_job_log(self, job_id: str, page_size: int = PAGE_SIZE) -> AsyncIterator[job_pb2.JobLogEntry]:
        request = job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=page_size)
        return self.paginate(self.jobs.ListJobLogEntries, request, lambda r: r.entries)

    # -- jobs -------------------------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> replication_pb2.ReplicationJob:
        """One replication job."""
        response = await self.replication.GetReplicationJob(
            replication_pb2.GetReplicationJobRequest(id=job_id), timeout=self.timeout_s
        )
        return response.job

    def watch_job(self, job_id: str, from_revision: int = 0) -> AsyncIterator[job_pb2.JobUpdate]:
        """Updates of one job: its current state first, then every change; resumes by itself after a cut."""
        return self._resuming(
            lambda revision: self.jobs.WatchJob(job_pb2.WatchJobRequest(job_id=job_id, from_revision=revision)),
            from_revision,
        )

    def watch_jobs(
        self, vm_context_id: str = "", from_revision: int = 0, include_finished: bool = False
    ) -> AsyncIterator[job_pb2.JobUpdate]:
        """Updates of every job (or of one VM context's): snapshots, SYNCED, then every change in revision order;
        resumes by itself after a cut."""
        return self._resuming(
            lambda revision: self.jobs.WatchJobs(
                job_pb2.WatchJobsRequest(
                    vm_context_id=vm_context_id, from_revision=revision, include_finished=include_finished
                )
            ),
            from_revision,
        )

    async def _resuming(self, open_call: Callable[[int], Any], from_revision: int) -> AsyncIterator[job_pb2.JobUpdate]:
        """A watch that outlives its calls: reopened from the last resume point after a cut, from 0 (a new snapshot)
        after OUT_OF_RANGE; any other error ends it."""
        revision = from_revision
        failures = 0
        while True:
            call = open_call(revision)
            try:
                async for response in call:
                    failures = 0
                    update = response.update
                    if update.kind in RESUME_POINTS:
                        revision = update.revision
                    yield update
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.OUT_OF_RANGE:
                    revision = 0  # history compacted: re-list through a new snapshot
                elif error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
                    raise
            finally:
                call.cancel()
            failures += 1
            first, longest = self.resume_backoff_s
            await asyncio.sleep(random.uniform(0, min(longest, first * 2 ** min(failures, 16))))
