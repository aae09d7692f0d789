"""The VMA side of the OMA stream (DESIGN.md §4): one long-lived `VmaGatewayService.Connect` per appliance.

`StreamClient` dials the OMA, sends Hello, and after the Welcome resends whatever the OMA has not durably applied
(per-job cursors), then pushes progress reports, events, command results and heartbeats while it receives acks
and commands. It reconnects forever with exponential backoff and full jitter — except when the OMA refuses the
credential (UNAUTHENTICATED), which ends the client with `AuthenticationError`. `target` may name several OMA
processes ("HOST:PORT,HOST:PORT", all serving one database): a failed connection moves to the next one at once, and
the backoff grows only once every one of them has failed in a row; the resend rules are the same wherever the stream
lands (the Welcome's cursors come from the shared database).

Per-job sequences only grow, across reconnects and (with `state_dir`) across agent restarts; unacked messages and
processed commands live in `vma_client_stubs.outbox.Outbox`, whose docstring states the memory bound. One connection
(handshake, reader, writer, the sending order) is `stream_session.py`; running the OMA's commands, `stream_commands.py`.
A progress report superseded before it was written is never written: a slow link coalesces progress instead of
queueing it.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from loguru import logger

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
from vma_client_stubs.stream_commands import COMMAND_KINDS, CommandHandler, CommandRunner
from vma_client_stubs.stream_session import (
    DEFAULT_HEARTBEAT_S,
    AuthenticationError,
    ClientStoppedError,
    RunningJobs,
    Session,
    StreamClientError,
    default_channel_options,
    describe,
    event_to_send,
    fit_text,
    handshake,
    next_request,
    open_channel,
    progress_to_send,
    result_to_send,
    serve,
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
    "fit_text",
]

AckCallback: TypeAlias = Callable[[str, int, stream_pb2.ProgressReport | None], Awaitable[None] | None]
StreamErrorCallback: TypeAlias = Callable[[stream_pb2.StreamError], Awaitable[None] | None]
WelcomeCallback: TypeAlias = Callable[[stream_pb2.Welcome], Awaitable[None] | None]


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
        channel_credentials: grpc.ChannelCredentials | Callable[[], grpc.ChannelCredentials] | None = None,
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
        self.targets = [t.strip() for t in target.split(",") if t.strip()] or [target]
        self._target_index = 0
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
        self._commands = CommandRunner(self._outbox, wake=self._wake, persist=self._persist, log=self._log)
        self._session: Session | None = None
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
        self._worker_task = asyncio.create_task(self._commands.work(), name=f"vma-commands-{self.appliance_id}")
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
        message = progress_to_send(report)
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
        message = event_to_send(event)
        self._outbox.add_event(message)
        self._wake()
        await self._persist()
        return message.sequence

    async def send_command_result(self, result: stream_pb2.CommandResult) -> None:
        """Records a command as processed and sends its result until the OMA acks it (for results sent outside a
        handler; handlers simply return theirs)."""
        self._raise_if_fatal()
        message = result_to_send(result)
        self._outbox.add_result(message)
        self._commands.result_sent(message.command_id)
        self._wake()
        await self._persist()

    # -- down -------------------------------------------------------------------------------------------------

    def on_command(self, kind: str, handler: CommandHandler) -> None:
        """Registers the handler of one command kind (a name of vma.v1.Command's `kind` oneof)."""
        self._commands.register(kind, handler)

    # -- internals: connect loop ------------------------------------------------------------------------------

    @property
    def target(self) -> str:
        """The OMA address this client dials now (the next one after a failure, when several are given)."""
        return self.targets[self._target_index]

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
                    self._log.log(level, "stream to {target} failed: {err}", target=self.target, err=describe(exc))
                if self._attempt_welcomed:
                    attempt = 0  # the backoff starts over after every successful Welcome
                self._target_index = (self._target_index + 1) % len(self.targets)
                # With several OMA processes each is tried once at once; then the backoff counts whole rounds.
                first_round = attempt < len(self.targets) - 1
                delay = 0.0 if first_round else self.backoff_delay(attempt // len(self.targets))
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
        # A function (identity.CertificateRenewer's) gives each connection the newest certificate.
        source = self.channel_credentials
        channel = open_channel(self.target, source() if callable(source) else source, self.channel_options)
        call = gateway_pb2_grpc.VmaGatewayServiceStub(channel).Connect()
        session = Session(call=call)
        self._session = session
        try:
            welcome = await handshake(call, self._hello(), self.welcome_timeout_s)
            await self._on_welcome(session, welcome)
            await serve(
                session,
                on_response=self._on_response,
                next_message=lambda: next_request(session, self._outbox, self.running_jobs),
                persist=self._persist,
                log=self._log.bind(session_id=session.session_id),
            )
        finally:
            if session.welcomed:
                self._log.info("disconnected from session {sid}", sid=session.session_id)
            self._connected.clear()
            self._session = None
            call.cancel()
            await channel.close()

    async def _on_welcome(self, session: Session, welcome: stream_pb2.Welcome) -> None:
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

    def _wake(self) -> None:
        session = self._session
        if session is not None and session.welcomed:
            session.wake.set()

    async def _on_response(self, session: Session, response: gateway_pb2.ConnectResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "ack":
            await self._on_ack(response.ack)
        elif kind == "command_result_ack":
            if self._outbox.ack_result(response.command_result_ack.command_id):
                async with self._acks:
                    self._acks.notify_all()
        elif kind == "command":
            self._commands.received(session, response.command)
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
