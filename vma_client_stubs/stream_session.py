"""One connection of the appliance stream: the channel it dials, the Hello/Welcome handshake, its session state, its
reader, writer and heartbeat tasks, the order in which buffered messages are written on it, and the errors the
stream client raises.

Sending order: the heartbeat first, then command results, then job messages in sequence order per job, round-robin
over jobs; each message once per connection (`Session.sent`), everything unacked again on the next connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc

from oma.v1 import gateway_pb2
from vma.v1 import stream_pb2
from vma_client_stubs.outbox import Outbox

RunningJobs: TypeAlias = Callable[[], Iterable[str]]

KEEPALIVE_TIME_MS = 60_000  # the OMA permits client pings every ≥ 30 s
KEEPALIVE_TIMEOUT_MS = 20_000
DEFAULT_HEARTBEAT_S = 10.0
# The OMA refuses a message with a longer text (it names the field); human texts are shortened here instead, so an
# appliance's long error message never costs it its report.
MAX_OPERATION_CHARS = 512
MAX_DETAIL_CHARS = 4096


def fit_text(text: str, limit: int) -> str:
    """`text`, shortened to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def default_channel_options(max_message_bytes: int = 16 * 1024 * 1024) -> list[tuple[str, int]]:
    """Channel options for the appliance stream: keepalive pings every 60 s even without calls, message limits,
    a private subchannel pool."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Every connect attempt opens its own channel; a private subchannel pool keeps gRPC's process-wide
        # subchannel (and its own reconnect backoff, up to 120 s) from delaying our jittered attempts.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def progress_to_send(report: stream_pb2.ProgressReport) -> stream_pb2.ProgressReport:
    """A copy of the caller's report as it is buffered: its operation text fitted, `sent_at` stamped when unset."""
    if not report.job_id:
        raise ValueError("ProgressReport.job_id is required")
    message = stream_pb2.ProgressReport()
    message.CopyFrom(report)
    message.current_operation = fit_text(message.current_operation, MAX_OPERATION_CHARS)
    if not message.HasField("sent_at"):
        message.sent_at.GetCurrentTime()
    return message


def event_to_send(event: stream_pb2.JobEvent) -> stream_pb2.JobEvent:
    """A copy of the caller's event as it is buffered: its detail fitted, `occurred_at` stamped when unset."""
    if not event.job_id:
        raise ValueError("JobEvent.job_id is required")
    if event.WhichOneof("event") is None:
        raise ValueError("JobEvent needs one of started, disk_completed, completed, failed, cancelled")
    message = stream_pb2.JobEvent()
    message.CopyFrom(event)
    kind = message.WhichOneof("event")
    if kind in ("failed", "cancelled"):  # touching the other member would switch the oneof
        part = getattr(message, kind)
        part.detail = fit_text(part.detail, MAX_DETAIL_CHARS)
    if not message.HasField("occurred_at"):
        message.occurred_at.GetCurrentTime()
    return message


def result_to_send(result: stream_pb2.CommandResult) -> stream_pb2.CommandResult:
    if not result.command_id:
        raise ValueError("CommandResult.command_id is required")
    message = stream_pb2.CommandResult()
    message.CopyFrom(result)
    message.detail = fit_text(message.detail, MAX_DETAIL_CHARS)
    return message


class StreamClientError(RuntimeError):
    """Base of the errors the stream client raises."""


class AuthenticationError(StreamClientError):
    """The OMA refused the appliance's credential (UNAUTHENTICATED); the client stopped and will not retry."""


class ClientStoppedError(StreamClientError):
    """The client was stopped (or never started) while waiting for it."""


class StreamEnded(Exception):
    """The stream ended without an error status (the OMA closed it, for example for a newer session)."""


@dataclass
class Session:
    """One connection attempt: its call, and what of the outbox was already written on it."""

    call: Any  # grpc.aio.StreamStreamCall
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    welcomed: bool = False
    session_id: str = ""
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    heartbeat_due: bool = False
    sent: dict[str, int] = field(default_factory=dict)  # job id → highest sequence written on this stream
    sent_results: set[str] = field(default_factory=set)  # command ids whose result was written on this stream
    rr: int = 0  # round-robin position over jobs


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
) -> grpc.aio.Channel:
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=options)
    return grpc.aio.insecure_channel(target, options=options)


async def handshake(call: Any, hello: gateway_pb2.ConnectRequest, timeout_s: float) -> stream_pb2.Welcome:
    """Write the Hello, read the Welcome; a refused credential raises AuthenticationError, anything else but a Welcome
    within `timeout_s` StreamClientError or StreamEnded."""
    try:
        await call.write(hello)
        first = await asyncio.wait_for(call.read(), timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise classify(exc) from exc
    except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
        # Writing failed because the call already ended: its status says why.
        if await call.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise AuthenticationError(await call.details() or "the OMA refused the credential") from exc
        raise StreamClientError(f"the stream ended: {(await call.code()).name} {await call.details()}") from exc
    except TimeoutError as exc:
        raise StreamClientError(f"no Welcome within {timeout_s} s") from exc
    if first is grpc.aio.EOF:
        raise StreamEnded("the OMA closed the stream before its Welcome")
    if first.WhichOneof("message") != "welcome":
        raise StreamClientError(f"the OMA answered Hello with {first.WhichOneof('message')}, not a Welcome")
    welcome: stream_pb2.Welcome = first.welcome
    return welcome


async def serve(
    session: Session,
    *,
    on_response: Callable[[Session, gateway_pb2.ConnectResponse], Awaitable[None]],
    next_message: Callable[[], gateway_pb2.ConnectRequest | None],
    persist: Callable[[], Awaitable[None]],
    log: Any,
) -> None:
    """Read and write on a welcomed session until it ends; always ends with an exception (the reader's, or
    StreamEnded)."""
    reader = asyncio.create_task(_read_loop(session, on_response), name="vma-stream-read")
    writer = asyncio.create_task(_write_loop(session, next_message, persist, log), name="vma-stream-write")
    beats = asyncio.create_task(_heartbeat_loop(session), name="vma-stream-heartbeat")
    tasks = [reader, writer, beats]
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():
            # The writer stopped: the call ended; the reader learns how within moments.
            await asyncio.wait({reader}, timeout=1.0)
        failure = reader.exception() if reader.done() else None
        if failure is not None:
            raise failure
        raise StreamEnded("the OMA closed the stream")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


async def _read_loop(
    session: Session, on_response: Callable[[Session, gateway_pb2.ConnectResponse], Awaitable[None]]
) -> None:
    while True:
        try:
            response = await session.call.read()
        except grpc.aio.AioRpcError as exc:
            raise classify(exc) from exc
        if response is grpc.aio.EOF:
            return
        await on_response(session, response)


async def _write_loop(
    session: Session,
    next_message: Callable[[], gateway_pb2.ConnectRequest | None],
    persist: Callable[[], Awaitable[None]],
    log: Any,
) -> None:
    """Write what is buffered whenever woken; the outbox is persisted before each write, so nothing reaches the wire
    that a restarted agent would not know about."""
    try:
        while True:
            await session.wake.wait()
            session.wake.clear()
            while (request := next_message()) is not None:
                await persist()
                await session.call.write(request)
    except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
        log.debug("writer stopped: {err}", err=describe(exc))
    except Exception:
        log.exception("stream writer failed")


async def _heartbeat_loop(session: Session) -> None:
    while True:
        await asyncio.sleep(session.heartbeat_s)
        session.heartbeat_due = True
        session.wake.set()


def next_request(
    session: Session, outbox: Outbox, running_jobs: RunningJobs | None
) -> gateway_pb2.ConnectRequest | None:
    """The next message to write on this stream, or None when everything buffered was written."""
    if session.heartbeat_due:
        session.heartbeat_due = False
        running = list(running_jobs()) if running_jobs is not None else []
        beat = stream_pb2.Heartbeat(running_job_ids=running)
        beat.sent_at.GetCurrentTime()
        return gateway_pb2.ConnectRequest(heartbeat=beat)
    for command_id, result in outbox.results.items():
        if command_id not in session.sent_results:
            session.sent_results.add(command_id)
            return gateway_pb2.ConnectRequest(command_result=result)
    jobs = outbox.unacked_jobs()
    for i in range(len(jobs)):
        job_id = jobs[(session.rr + i) % len(jobs)]
        sent = session.sent.get(job_id, 0)
        for message in outbox.jobs[job_id].unacked():
            if message.sequence > sent:
                session.sent[job_id] = message.sequence
                session.rr = session.rr + i + 1
                if isinstance(message, stream_pb2.JobEvent):
                    return gateway_pb2.ConnectRequest(event=message)
                return gateway_pb2.ConnectRequest(progress=message)
    return None


def classify(exc: grpc.aio.AioRpcError) -> Exception:
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(exc.details() or "the OMA refused the credential")
    return exc


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
