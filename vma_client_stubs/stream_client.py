"""The VMA side of the OMA stream (DESIGN.md §4): one long-lived `VmaGatewayService.Connect` per appliance.

`StreamClient` dials the OMA, sends Hello, and after the Welcome resends whatever the OMA has not durably applied
(per-job cursors), then pushes progress reports, events, command results and heartbeats while it receives acks
and commands. It reconnects forever with exponential backoff and full jitter — except when the OMA refuses the
credential (UNAUTHENTICATED), which ends the client with `AuthenticationError`.

Per-job sequences only grow, across reconnects and (with `state_dir`) across agent restarts; unacked messages and
processed commands live in `vma_client_stubs.outbox.Outbox`, whose docstring states the memory bound.

Sending order: one writer task per connection takes the next unsent message from the outbox (heartbeat first, then
command results, then job messages in sequence order per job, round-robin over jobs) and persists the outbox before
writing it, so nothing reaches the wire that a restarted agent would not know about. A progress report superseded
before it was written is never written: a slow link coalesces progress instead of queueing it.

Commands run one at a time, in arrival order, in a worker that outlives connections; a command id already
processed is answered from the cache without running the handler again.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from loguru import logger

from oma.common.v1 import jobs_pb2
from oma.v1 import gateway_pb2, gateway_pb2_grpc
from vma.v1 import stream_pb2
from vma_client_stubs.outbox import (
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_RESULTS,
    DEFAULT_MAX_UNACKED_EVENTS,
    Outbox,
    OutboxFullError,
    SequenceError,
    StateFile,
)

__all__ = [
    "COMMAND_KINDS",
    "AuthenticationError",
    "ClientStoppedError",
    "CommandHandler",
    "OutboxFullError",
    "SequenceError",
    "StreamClient",
    "StreamClientError",
    "default_channel_options",
]

CommandHandler: TypeAlias = Callable[[stream_pb2.Command], Awaitable[stream_pb2.CommandResult | None]]
AckCallback: TypeAlias = Callable[[str, int, stream_pb2.ProgressReport | None], Awaitable[None] | None]
StreamErrorCallback: TypeAlias = Callable[[stream_pb2.StreamError], Awaitable[None] | None]
WelcomeCallback: TypeAlias = Callable[[stream_pb2.Welcome], Awaitable[None] | None]
RunningJobs: TypeAlias = Callable[[], Iterable[str]]

# Names of the vma.v1.Command `kind` oneof: the keys handlers are registered under.
COMMAND_KINDS: frozenset[str] = frozenset(f.name for f in stream_pb2.Command.DESCRIPTOR.oneofs_by_name["kind"].fields)

KEEPALIVE_TIME_MS = 60_000  # the OMA permits client pings every ≥ 30 s
KEEPALIVE_TIMEOUT_MS = 20_000
DEFAULT_HEARTBEAT_S = 10.0
COMMAND_QUEUE_SIZE = 1_000
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


class StreamClientError(RuntimeError):
    """Base of the errors the stream client raises."""


class AuthenticationError(StreamClientError):
    """The OMA refused the appliance's credential (UNAUTHENTICATED); the client stopped and will not retry."""


class ClientStoppedError(StreamClientError):
    """The client was stopped (or never started) while waiting for it."""


class _StreamEnded(Exception):
    """The stream ended without an error status (the OMA closed it, for example for a newer session)."""


@dataclass
class _Session:
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


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


class StreamClient:
    """Holds an appliance's stream to the OMA: connect, hello, resend, heartbeats, acks and command dispatch."""

    def __init__(
        self,
        target: str,
        appliance_id: str,
        credential: str,
        *,
        agent_version: str,
        capabilities: Sequence[str] = (),
        state_dir: Path | None = None,
        max_backoff_s: float = 30.0,
        initial_backoff_s: float = 0.2,
        backoff_factor: float = 2.0,
        channel_options: Sequence[tuple[str, Any]] | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        welcome_timeout_s: float = 30.0,
        running_jobs: RunningJobs | None = None,
        on_ack: AckCallback | None = None,
        on_stream_error: StreamErrorCallback | None = None,
        on_welcome: WelcomeCallback | None = None,
        max_unacked_events: int = DEFAULT_MAX_UNACKED_EVENTS,
        max_results: int = DEFAULT_MAX_RESULTS,
        max_jobs: int = DEFAULT_MAX_JOBS,
        fsync: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.appliance_id = appliance_id
        self._credential = credential
        self.agent_version = agent_version
        self.capabilities = list(capabilities)
        self.max_backoff_s = max_backoff_s
        self.initial_backoff_s = initial_backoff_s
        self.backoff_factor = backoff_factor
        self.channel_options = list(channel_options) if channel_options is not None else default_channel_options()
        self.channel_credentials = channel_credentials
        self.welcome_timeout_s = welcome_timeout_s
        self.running_jobs = running_jobs
        self.on_ack = on_ack
        self.on_stream_error = on_stream_error
        self.on_welcome = on_welcome
        self._rng = rng or random.Random()
        self._log = logger.bind(appliance_id=appliance_id)
        self._outbox = Outbox(max_unacked_events=max_unacked_events, max_results=max_results, max_jobs=max_jobs)
        self._state_file = StateFile(state_dir, fsync=fsync) if state_dir is not None else None
        if self._state_file is not None and self._state_file.load(self._outbox):
            # Read here (a small file) so next_sequence() and acked_sequence() are right before start().
            self._log.info(
                "restored stream state: {jobs} jobs, {unacked} unacked messages, last command {cmd!r}",
                jobs=len(self._outbox.jobs),
                unacked=self._outbox.unacked_count(),
                cmd=self._outbox.last_command_id,
            )
        self._written_generation = self._outbox.generation
        self._persist_lock = asyncio.Lock()
        self._handlers: dict[str, CommandHandler] = {}
        self._commands: asyncio.Queue[stream_pb2.Command] = asyncio.Queue(COMMAND_QUEUE_SIZE)
        self._inflight: set[str] = set()
        self._session: _Session | None = None
        self._welcome: stream_pb2.Welcome | None = None
        self._connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._acks = asyncio.Condition()
        self._stop_requested = asyncio.Event()
        self._fatal: StreamClientError | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._started = False
        self._attempt_welcomed = False
        self.connect_attempts = 0  # every Connect tried, for tests and metrics
        self.sessions = 0  # every Welcome received

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self, *, wait_connected: float | None = None) -> None:
        """Starts the connect loop and the command worker in the background.

        With `wait_connected`, also waits up to that many seconds for the first Welcome (raising
        `AuthenticationError` or `TimeoutError` like `wait_connected()`).
        """
        if self._started:
            raise StreamClientError("StreamClient.start() called twice")
        self._started = True
        self._run_task = asyncio.create_task(self._run(), name=f"vma-stream-{self.appliance_id}")
        self._worker_task = asyncio.create_task(self._command_worker(), name=f"vma-commands-{self.appliance_id}")
        if wait_connected is not None:
            await self.wait_connected(wait_connected)

    async def stop(self) -> None:
        """Closes the stream, stops reconnecting and command processing, and writes the state file."""
        self._stop_requested.set()
        for task in (self._run_task, self._worker_task):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._run_task, self._worker_task):
            if task is not None:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._closed.set()
        await self._persist()

    async def __aenter__(self) -> StreamClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Waits for a Welcome. Raises AuthenticationError if the OMA refused us, TimeoutError past `timeout`."""
        self._raise_if_fatal()
        if self._connected.is_set():
            return
        if not self._started or self._closed.is_set():
            raise ClientStoppedError("the stream client is not running")
        connected = asyncio.ensure_future(self._connected.wait())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({connected, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            closed.cancel()
        self._raise_if_fatal()
        if self._connected.is_set():
            return
        if self._closed.is_set():
            raise ClientStoppedError("the stream client stopped before it connected")
        raise TimeoutError(f"no Welcome from {self.target} within {timeout} s")

    async def wait_closed(self) -> None:
        """Waits until the client ends: returns after stop(), raises AuthenticationError if the OMA refused us."""
        await self._closed.wait()
        self._raise_if_fatal()

    async def wait_acked(self, timeout: float | None = None) -> None:
        """Waits until the OMA acked every buffered job message and command result (TimeoutError past timeout)."""

        async def _wait() -> None:
            async with self._acks:
                await self._acks.wait_for(lambda: self._outbox.unacked_count() == 0 or self._closed.is_set())

        await asyncio.wait_for(_wait(), timeout)
        self._raise_if_fatal()

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    # -- properties -------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def session_id(self) -> str:
        """Id of the current session, empty while disconnected."""
        return self._session.session_id if self._session is not None and self._session.welcomed else ""

    @property
    def welcome(self) -> stream_pb2.Welcome | None:
        """The last Welcome received (kept after a disconnect)."""
        return self._welcome

    @property
    def last_command_id(self) -> str:
        return self._outbox.last_command_id

    @property
    def outbox(self) -> Outbox:
        """The outbox itself, for inspection (do not mutate)."""
        return self._outbox

    def acked_sequence(self, job_id: str) -> int:
        """Highest sequence of the job the OMA durably stored (0 when none)."""
        return self._outbox.acked_sequence(job_id)

    def last_sequence(self, job_id: str) -> int:
        """Highest sequence of the job used so far, locally or by the OMA."""
        return self._outbox.last_sequence(job_id)

    def unacked_count(self) -> int:
        """Job messages and command results not yet acked by the OMA."""
        return self._outbox.unacked_count()

    # -- up ---------------------------------------------------------------------------------------------------

    def next_sequence(self, job_id: str) -> int:
        """Reserves the next sequence of a job (above every one used locally and every one the OMA applied).

        Only needed to number a message before handing it over; messages with sequence 0 are numbered on submit.
        Messages must be submitted in the order of their sequences.
        """
        return self._outbox.next_sequence(job_id)

    async def report_progress(self, report: stream_pb2.ProgressReport) -> int:
        """Buffers a (cumulative) progress report and sends it when connected; returns its sequence.

        The caller fills `job_id` and the figures; the client assigns `sequence` when 0 and `sent_at` when unset.
        Only the latest unacked report of a job is kept. Never blocks on the network.
        """
        self._raise_if_fatal()
        if not report.job_id:
            raise ValueError("ProgressReport.job_id is required")
        message = stream_pb2.ProgressReport()
        message.CopyFrom(report)
        message.current_operation = fit_text(message.current_operation, MAX_OPERATION_CHARS)
        if not message.HasField("sent_at"):
            message.sent_at.GetCurrentTime()
        self._outbox.add_progress(message)
        self._wake()
        await self._persist()
        return message.sequence

    async def emit_event(self, event: stream_pb2.JobEvent) -> int:
        """Buffers a job event until the OMA acks it and sends it when connected; returns its sequence.

        The client assigns `sequence` when 0 and `occurred_at` when unset. Events are never coalesced. Raises
        `OutboxFullError` when too many events wait for acks (see `outbox.py` for the bound).
        """
        self._raise_if_fatal()
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
        self._outbox.add_event(message)
        self._wake()
        await self._persist()
        return message.sequence

    async def send_command_result(self, result: stream_pb2.CommandResult) -> None:
        """Records a command as processed and sends its result until the OMA acks it (for results sent outside a
        handler; handlers simply return theirs)."""
        self._raise_if_fatal()
        if not result.command_id:
            raise ValueError("CommandResult.command_id is required")
        message = stream_pb2.CommandResult()
        message.CopyFrom(result)
        message.detail = fit_text(message.detail, MAX_DETAIL_CHARS)
        self._outbox.add_result(message)
        self._inflight.discard(message.command_id)
        self._wake()
        await self._persist()

    # -- down -------------------------------------------------------------------------------------------------

    def on_command(self, kind: str, handler: CommandHandler) -> None:
        """Registers the handler of one command kind (a name of vma.v1.Command's `kind` oneof)."""
        if kind not in COMMAND_KINDS:
            raise ValueError(f"unknown command kind {kind!r}; expected one of {sorted(COMMAND_KINDS)}")
        self._handlers[kind] = handler

    # -- internals: connect loop ------------------------------------------------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, initial * factor**attempt)]."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * (self.backoff_factor ** min(attempt, 64)))
        return self._rng.uniform(0.0, ceiling)

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop_requested.is_set():
                self._attempt_welcomed = False
                try:
                    await self._connect_once()
                except AuthenticationError as exc:
                    self._fatal = exc
                    self._log.error("the OMA refused this appliance's credential; not retrying: {err}", err=exc)
                    return
                except Exception as exc:
                    # Loud when a working stream breaks or the first attempt fails; quiet while the OMA stays away.
                    level = "WARNING" if self._attempt_welcomed or attempt == 0 else "INFO"
                    self._log.log(level, "stream to {target} failed: {err}", target=self.target, err=_describe(exc))
                if self._attempt_welcomed:
                    attempt = 0  # the backoff starts over after every successful Welcome
                delay = self.backoff_delay(attempt)
                attempt += 1
                self._log.debug("reconnecting in {delay:.2f} s (attempt {attempt})", delay=delay, attempt=attempt)
                try:
                    await asyncio.wait_for(self._stop_requested.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            self._connected.clear()
            self._session = None
            self._closed.set()
            async with self._acks:
                self._acks.notify_all()

    def _channel(self) -> grpc.aio.Channel:
        if self.channel_credentials is not None:
            return grpc.aio.secure_channel(self.target, self.channel_credentials, options=self.channel_options)
        return grpc.aio.insecure_channel(self.target, options=self.channel_options)

    def _hello(self) -> gateway_pb2.ConnectRequest:
        return gateway_pb2.ConnectRequest(
            hello=stream_pb2.Hello(
                appliance_id=self.appliance_id,
                credential=self._credential,
                agent_version=self.agent_version,
                capabilities=self.capabilities,
                last_command_id=self._outbox.last_command_id,
            )
        )

    async def _connect_once(self) -> None:
        """One connection: hello, welcome, then read and write until it ends; always ends with an exception."""
        self.connect_attempts += 1
        channel = self._channel()
        call = gateway_pb2_grpc.VmaGatewayServiceStub(channel).Connect()
        session = _Session(call=call)
        self._session = session
        tasks: list[asyncio.Task[None]] = []
        try:
            try:
                await call.write(self._hello())
                first = await asyncio.wait_for(call.read(), self.welcome_timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise _classify(exc) from exc
            except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                # Writing failed because the call already ended: its status says why.
                if await call.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise AuthenticationError(await call.details() or "the OMA refused the credential") from exc
                raise StreamClientError(f"the stream ended: {(await call.code()).name} {await call.details()}") from exc
            except TimeoutError as exc:
                raise StreamClientError(f"no Welcome within {self.welcome_timeout_s} s") from exc
            if first is grpc.aio.EOF:
                raise _StreamEnded("the OMA closed the stream before its Welcome")
            if first.WhichOneof("message") != "welcome":
                raise StreamClientError(f"the OMA answered Hello with {first.WhichOneof('message')}, not a Welcome")
            await self._on_welcome(session, first.welcome)
            reader = asyncio.create_task(self._read_loop(session), name="vma-stream-read")
            writer = asyncio.create_task(self._write_loop(session), name="vma-stream-write")
            beats = asyncio.create_task(self._heartbeat_loop(session), name="vma-stream-heartbeat")
            tasks = [reader, writer, beats]
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                # The writer stopped: the call ended; the reader learns how within moments.
                await asyncio.wait({reader}, timeout=1.0)
            failure = reader.exception() if reader.done() else None
            if failure is not None:
                raise failure
            raise _StreamEnded("the OMA closed the stream")
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
            if session.welcomed:
                self._log.info("disconnected from session {sid}", sid=session.session_id)
            self._connected.clear()
            self._session = None
            call.cancel()
            await channel.close()

    async def _on_welcome(self, session: _Session, welcome: stream_pb2.Welcome) -> None:
        dropped = 0
        for cursor in welcome.open_jobs:
            dropped += self._outbox.observe_server_sequence(cursor.job_id, cursor.last_applied_sequence)
        interval = welcome.heartbeat_interval.seconds + welcome.heartbeat_interval.nanos / 1e9
        session.heartbeat_s = interval if interval > 0 else DEFAULT_HEARTBEAT_S
        session.session_id = welcome.session_id
        session.welcomed = True
        self._attempt_welcomed = True
        session.heartbeat_due = True
        self._welcome = welcome
        self.sessions += 1
        self._log.bind(session_id=welcome.session_id).info(
            "connected to {target} (server {version}): {jobs} open jobs, {dropped} buffered messages already "
            "applied, {resend} to resend",
            target=self.target,
            version=welcome.server_version,
            jobs=len(welcome.open_jobs),
            dropped=dropped,
            resend=self._outbox.unacked_count(),
        )
        self._connected.set()
        session.wake.set()
        async with self._acks:
            self._acks.notify_all()
        if self.on_welcome is not None:
            await self._callback(self.on_welcome, welcome)

    async def _read_loop(self, session: _Session) -> None:
        while True:
            try:
                response = await session.call.read()
            except grpc.aio.AioRpcError as exc:
                raise _classify(exc) from exc
            if response is grpc.aio.EOF:
                return
            await self._on_response(session, response)

    async def _write_loop(self, session: _Session) -> None:
        log = self._log.bind(session_id=session.session_id)
        try:
            while True:
                await session.wake.wait()
                session.wake.clear()
                while (request := self._next_request(session)) is not None:
                    await self._persist()
                    await session.call.write(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            log.debug("writer stopped: {err}", err=_describe(exc))
        except Exception:
            log.exception("stream writer failed")

    async def _heartbeat_loop(self, session: _Session) -> None:
        while True:
            await asyncio.sleep(session.heartbeat_s)
            session.heartbeat_due = True
            session.wake.set()

    def _wake(self) -> None:
        session = self._session
        if session is not None and session.welcomed:
            session.wake.set()

    def _next_request(self, session: _Session) -> gateway_pb2.ConnectRequest | None:
        """The next message to write on this stream, or None when everything buffered was written."""
        if session.heartbeat_due:
            session.heartbeat_due = False
            running = list(self.running_jobs()) if self.running_jobs is not None else []
            beat = stream_pb2.Heartbeat(running_job_ids=running)
            beat.sent_at.GetCurrentTime()
            return gateway_pb2.ConnectRequest(heartbeat=beat)
        for command_id, result in self._outbox.results.items():
            if command_id not in session.sent_results:
                session.sent_results.add(command_id)
                return gateway_pb2.ConnectRequest(command_result=result)
        jobs = self._outbox.unacked_jobs()
        for i in range(len(jobs)):
            job_id = jobs[(session.rr + i) % len(jobs)]
            sent = session.sent.get(job_id, 0)
            for message in self._outbox.jobs[job_id].unacked():
                if message.sequence > sent:
                    session.sent[job_id] = message.sequence
                    session.rr = session.rr + i + 1
                    if isinstance(message, stream_pb2.JobEvent):
                        return gateway_pb2.ConnectRequest(event=message)
                    return gateway_pb2.ConnectRequest(progress=message)
        return None

    async def _on_response(self, session: _Session, response: gateway_pb2.ConnectResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "ack":
            await self._on_ack(response.ack)
        elif kind == "command_result_ack":
            if self._outbox.ack_result(response.command_result_ack.command_id):
                async with self._acks:
                    self._acks.notify_all()
        elif kind == "command":
            self._on_command_received(session, response.command)
        elif kind == "error":
            await self._on_stream_error(response.error)
        else:
            self._log.bind(session_id=session.session_id).warning("ignoring unexpected {kind} from the OMA", kind=kind)

    async def _on_ack(self, ack: stream_pb2.JobAck) -> None:
        outcome = self._outbox.ack(ack.job_id, ack.sequence)
        async with self._acks:
            self._acks.notify_all()
        if self.on_ack is not None:
            await self._callback(self.on_ack, ack.job_id, ack.sequence, outcome.progress)

    async def _on_stream_error(self, error: stream_pb2.StreamError) -> None:
        log = self._log.bind(job_id=error.job_id, command_id=error.command_id)
        dropped = 0
        if error.job_id:
            dropped = self._outbox.drop(error.job_id, error.sequence)
        if error.command_id and self._outbox.ack_result(error.command_id):
            dropped += 1
        log.warning(
            "the OMA rejected a message ({code}, sequence {seq}): {msg}; dropped {dropped} buffered message(s)",
            code=stream_pb2.StreamErrorCode.Name(error.code),
            seq=error.sequence,
            msg=error.message,
            dropped=dropped,
        )
        async with self._acks:
            self._acks.notify_all()
        if self.on_stream_error is not None:
            await self._callback(self.on_stream_error, error)

    async def _callback(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            await _maybe_await(callback(*args))
        except Exception:
            self._log.exception("callback {name} failed", name=getattr(callback, "__name__", repr(callback)))

    # -- internals: commands ----------------------------------------------------------------------------------

    def _on_command_received(self, session: _Session, command: stream_pb2.Command) -> None:
        log = self._log.bind(session_id=session.session_id, command_id=command.command_id)
        if not command.command_id:
            log.warning("ignoring a command without command_id")
            return
        if self._outbox.requeue_result(command.command_id) is not None:
            log.info("command already processed; re-sending its result")
            session.sent_results.discard(command.command_id)
            session.wake.set()
            return
        if command.command_id in self._inflight:
            log.debug("command is already being processed")
            return
        try:
            self._commands.put_nowait(command)
        except asyncio.QueueFull:
            log.warning("command queue full ({n}); the OMA will re-deliver it", n=COMMAND_QUEUE_SIZE)
            return
        self._inflight.add(command.command_id)

    async def _command_worker(self) -> None:
        while True:
            command = await self._commands.get()
            result = await self._run_handler(command)
            result.command_id = command.command_id
            result.detail = fit_text(result.detail, MAX_DETAIL_CHARS)
            if command.command_id in self._inflight:
                self._inflight.discard(command.command_id)
                self._outbox.add_result(result)
                self._wake()
                await self._persist()

    async def _run_handler(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        kind = command.WhichOneof("kind")
        log = self._log.bind(command_id=command.command_id)
        if kind == "start_replication":
            start = command.start_replication
            self._outbox.observe_server_sequence(start.job_id, start.last_applied_sequence)
            log = log.bind(job_id=start.job_id)
        handler = self._handlers.get(kind or "")
        if handler is None:
            log.warning("rejecting command {kind}: no handler registered", kind=kind)
            return stream_pb2.CommandResult(
                outcome=stream_pb2.COMMAND_OUTCOME_REJECTED,
                error_class=jobs_pb2.ERROR_CLASS_INVALID_COMMAND,
                detail=f"this appliance does not handle {kind or 'an empty'} command",
            )
        log.info("running command {kind}", kind=kind)
        try:
            result = await handler(command)
        except Exception as exc:
            log.exception("handler of {kind} failed", kind=kind)
            return stream_pb2.CommandResult(
                outcome=stream_pb2.COMMAND_OUTCOME_FAILED,
                error_class=jobs_pb2.ERROR_CLASS_INTERNAL,
                detail=f"{kind} failed on the appliance: {type(exc).__name__}: {exc}",
            )
        if result is None:
            return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED)
        copy = stream_pb2.CommandResult()
        copy.CopyFrom(result)
        if copy.outcome == stream_pb2.COMMAND_OUTCOME_UNSPECIFIED:
            copy.outcome = stream_pb2.COMMAND_OUTCOME_SUCCEEDED
        return copy

    # -- internals: persistence -------------------------------------------------------------------------------

    async def _persist(self) -> None:
        """Writes the outbox if it changed since the last write (coalescing concurrent callers)."""
        if self._state_file is None:
            return
        async with self._persist_lock:
            generation = self._outbox.generation
            if generation == self._written_generation:
                return
            snapshot = self._outbox.snapshot()
            await asyncio.to_thread(self._state_file.write, snapshot)
            self._written_generation = generation


def _classify(exc: grpc.aio.AioRpcError) -> Exception:
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(exc.details() or "the OMA refused the credential")
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
