"""A scripted stand-in for the OMA's side of `VmaGatewayService.Connect`, for client-protocol tests.

It is a test double of the peer, not of the code under test: it checks the Hello, answers with a Welcome carrying
per-job cursors, "applies" job messages the way DESIGN.md §4 says the OMA does (only when the sequence grows),
acks them (or not), records everything, and lets a test push commands, reject messages and cut the stream.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from oma.v1 import gateway_pb2, gateway_pb2_grpc
from vma.v1 import stream_pb2

Rejecter = Callable[[gateway_pb2.ConnectRequest], stream_pb2.StreamError | None]


@dataclass
class FakeSession:
    session_id: str
    hello: stream_pb2.Hello
    out: asyncio.Queue[gateway_pb2.ConnectResponse | grpc.StatusCode | None] = field(default_factory=asyncio.Queue)
    received: list[gateway_pb2.ConnectRequest] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False  # the OMA behind it crashed: nothing more read on it is applied

    def send(self, response: gateway_pb2.ConnectResponse) -> None:
        self.out.put_nowait(response)

    def kill(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """Ends the stream with an error status, as a crash or a network cut would look to the client."""
        self.out.put_nowait(code)

    def job_messages(self, job_id: str | None = None) -> list[tuple[str, int]]:
        """(kind, sequence) of every progress report and event received on this stream, in arrival order."""
        found = []
        for request in self.received:
            kind = request.WhichOneof("message")
            if kind in ("progress", "event"):
                message = getattr(request, kind)
                if job_id is None or message.job_id == job_id:
                    found.append((kind, message.sequence))
        return found

    def of_kind(self, kind: str) -> list:
        return [getattr(r, kind) for r in self.received if r.WhichOneof("message") == kind]


class FakeGateway(gateway_pb2_grpc.VmaGatewayServiceServicer):
    def __init__(self, credentials: dict[str, str]) -> None:
        self.credentials = credentials
        self.sessions: list[FakeSession] = []
        self.hellos: list[stream_pb2.Hello] = []
        self.applied: dict[str, int] = {}  # job id → highest sequence applied
        self.open_jobs: set[str] = set()
        self.applied_events: list[stream_pb2.JobEvent] = []
        self.applied_progress: dict[str, stream_pb2.ProgressReport] = {}
        self.results: dict[str, stream_pb2.CommandResult] = {}
        self.acked: dict[str, int] = {}  # job id → highest sequence acked (what the OMA promised is durable)
        self.auto_ack = True
        self.ack_results = True
        self.reject: Rejecter | None = None
        self.heartbeat_interval_s = 10.0
        self.changed = asyncio.Condition()
        self._ids = itertools.count(1)

    @property
    def session(self) -> FakeSession:
        return self.sessions[-1]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async def _wait() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)

        await asyncio.wait_for(_wait(), timeout)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("message") != "hello":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the first message must be a Hello")
        hello = first.hello
        self.hellos.append(hello)
        if self.credentials.get(hello.appliance_id) != hello.credential:
            await self._notify()
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"appliance {hello.appliance_id}: unknown or revoked credential"
            )
        session = FakeSession(session_id=f"s{next(self._ids)}", hello=hello)
        for old in self.sessions:
            old.out.put_nowait(None)  # a newer stream replaces older ones
        self.sessions.append(session)
        welcome = stream_pb2.Welcome(
            session_id=session.session_id,
            server_version="fake",
            open_jobs=[
                stream_pb2.JobCursor(job_id=j, last_applied_sequence=self.applied.get(j, 0))
                for j in sorted(self.open_jobs)
            ],
        )
        welcome.heartbeat_interval.FromNanoseconds(int(self.heartbeat_interval_s * 1e9))
        await context.write(gateway_pb2.ConnectResponse(welcome=welcome))
        await self._notify()
        reader = asyncio.create_task(self._read(session, context))
        try:
            while True:
                item = await session.out.get()
                if item is None:
                    return
                if isinstance(item, grpc.StatusCode):
                    await context.abort(item, "stream cut by the test")
                await context.write(item)
        finally:
            reader.cancel()
            session.ended.set()
            await self._notify()

    async def _read(self, session: FakeSession, context: grpc.aio.ServicerContext) -> None:
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                session.out.put_nowait(None)
                return
            if session.dead:
                continue
            session.received.append(request)
            self._apply(session, request)
            await self._notify()

    def _apply(self, session: FakeSession, request: gateway_pb2.ConnectRequest) -> None:
        kind = request.WhichOneof("message")
        if self.reject is not None and kind != "heartbeat":
            error = self.reject(request)
            if error is not None:
                session.send(gateway_pb2.ConnectResponse(error=error))
                return
        if kind in ("progress", "event"):
            message = getattr(request, kind)
            if message.sequence > self.applied.get(message.job_id, 0):
                self.applied[message.job_id] = message.sequence
                if kind == "event":
                    self.applied_events.append(message)
                else:
                    self.applied_progress[message.job_id] = message
            if self.auto_ack:
                self.acked[message.job_id] = self.applied[message.job_id]
                session.send(
                    gateway_pb2.ConnectResponse(
                        ack=stream_pb2.JobAck(job_id=message.job_id, sequence=self.applied[message.job_id])
                    )
                )
        elif kind == "command_result":
            result = request.command_result
            self.results[result.command_id] = result
            if self.ack_results:
                session.send(
                    gateway_pb2.ConnectResponse(
                        command_result_ack=stream_pb2.CommandResultAck(command_id=result.command_id)
                    )
                )

    def crash(self) -> None:
        """The OMA dies: what it applied but never acked is lost (it was not durable), and the stream is cut."""
        if self.sessions:
            self.session.dead = True
        for job_id in list(self.applied):
            durable = self.acked.get(job_id, 0)
            self.applied[job_id] = durable
            self.applied_events = [e for e in self.applied_events if e.job_id != job_id or e.sequence <= durable]
            progress = self.applied_progress.get(job_id)
            if progress is not None and progress.sequence > durable:
                del self.applied_progress[job_id]  # a real OMA would keep its last durable report instead
        if self.sessions:
            self.session.kill()


class FakeOma:
    """A grpc.aio server hosting a FakeGateway on a fixed port that survives restarts."""

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.port = 0
        self.server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = grpc.aio.server()
        gateway_pb2_grpc.add_VmaGatewayServiceServicer_to_server(self.gateway, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert self.port
        await self.server.start()

    async def stop(self, grace: float | None = None) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
