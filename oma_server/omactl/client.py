"""The connection to the OMA and the one place that turns a failed call into omactl's one-line error."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from oma.v1 import (
    access_pb2_grpc,
    appliance_pb2_grpc,
    bandwidth_pb2_grpc,
    cloud_pb2_grpc,
    failover_pb2_grpc,
    job_pb2_grpc,
    machine_group_pb2_grpc,
    replication_pb2_grpc,
    schedule_pb2_grpc,
    storage_pb2_grpc,
    vm_context_pb2_grpc,
)
from oma_server.omactl.hints import for_omactl
from vma_client_stubs.connection import Endpoint, sync_channel, tls_failure
from vma_client_stubs.errors import error_info_of

T = TypeVar("T", bound=Message)
LIST_PAGE_SIZE = 1000


class CliError(Exception):
    """A failure to report as one line `omactl: <text>` with exit code `exit_code`."""

    def __init__(self, text: str, exit_code: int = 1) -> None:
        super().__init__(text)
        self.text = text
        self.exit_code = exit_code


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe_rpc_error(error: grpc.RpcError, server: str, method: str = "", timeout: float | None = None) -> str:
    """`CODE: message (REASON)` for a failed call; connection failures get a hint instead of gRPC's internals."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    details = one_line(error.details() or "")  # type: ignore[attr-defined]
    info = error_info_of(error)
    if info is not None:
        details = for_omactl(details, info.reason, info.metadata)
        return f"{code.name}: {details} ({info.reason})" if info.reason else f"{code.name}: {details}"
    if code == grpc.StatusCode.UNAVAILABLE and tls_failure(details):
        return (
            f"UNAVAILABLE: the TLS handshake with the OMA at {server} failed: give its CA with --ca or OMA_CA "
            "(the server's <data dir>/tls/ca.crt), or --insecure if it serves plaintext"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"UNAVAILABLE: cannot reach the OMA at {server} (is oma-server running?)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        limit = f" within {timeout:g} s" if timeout else ""
        return f"DEADLINE_EXCEEDED: no answer from the OMA at {server}{limit}; raise --timeout or check the server"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        where = f" {method}" if method else " this call"
        return f"UNIMPLEMENTED: the OMA at {server} does not serve{where} (is it older than omactl?)"
    return f"{code.name}: {details or 'no detail from the server'}"


class Client:
    """Stubs of every oma.v1 service on one channel, with the deadline and error handling omactl wants."""

    def __init__(self, endpoint: Endpoint, timeout: float | None, channel: grpc.Channel | None = None) -> None:
        """`channel`: one made elsewhere (tests script the server's answers on a grpc_testing channel)."""
        self.server = endpoint.target
        self.timeout = timeout
        self.channel = channel or sync_channel(
            endpoint,
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 0)],
        )
        self.appliances = appliance_pb2_grpc.ApplianceServiceStub(self.channel)
        self.access = access_pb2_grpc.AccessServiceStub(self.channel)
        self.vms = vm_context_pb2_grpc.VmContextServiceStub(self.channel)
        self.replication = replication_pb2_grpc.ReplicationServiceStub(self.channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)
        self.volumes = storage_pb2_grpc.VolumeServiceStub(self.channel)
        self.exports = storage_pb2_grpc.NbdExportServiceStub(self.channel)
        self.failover = failover_pb2_grpc.FailoverServiceStub(self.channel)
        self.network_maps = failover_pb2_grpc.NetworkMappingServiceStub(self.channel)
        self.cloud = cloud_pb2_grpc.CloudServiceStub(self.channel)
        self.schedules = schedule_pb2_grpc.ScheduleServiceStub(self.channel)
        self.bandwidth = bandwidth_pb2_grpc.BandwidthServiceStub(self.channel)
        self.groups = machine_group_pb2_grpc.MachineGroupServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, stub: Any, method: str, request: Message, timeout: float | None = None) -> Any:
        """One unary call; a failure becomes a CliError carrying the one-line description."""
        deadline = timeout if timeout is not None else self.timeout
        try:
            return getattr(stub, method)(request, timeout=deadline)
        except grpc.RpcError as error:
            raise self.error(error, f"oma.v1.{type(stub).__name__.removesuffix('Stub')}/{method}", deadline) from None

    def error(self, error: grpc.RpcError, method: str = "", timeout: float | None = None) -> CliError:
        return CliError(describe_rpc_error(error, self.server, method, timeout))

    def paged(
        self,
        stub: Any,
        method: str,
        request: Message,
        items: Callable[[Any], Iterable[T]],
    ) -> Iterator[T]:
        """Every item of a paginated List call, following next_page_token."""
        request.page_size = LIST_PAGE_SIZE  # type: ignore[attr-defined]
        while True:
            reply = self.call(stub, method, request)
            yield from items(reply)
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token  # type: ignore[attr-defined]

    @staticmethod
    def rpc_code(error: grpc.RpcError) -> grpc.StatusCode:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        return code
