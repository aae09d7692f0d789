"""VmaGatewayService.Connect: unwraps the appliance's messages for the session hub and wraps the hub's answers.

One reader task applies inbound messages in order; this generator is the stream's single writer, draining the
session's bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from oma.v1 import gateway_pb2, gateway_pb2_grpc
from oma_server.api.appliance_identity import peer_certificate
from oma_server.errors import Aborted, MessageRejected, Unauthenticated, Unavailable
from oma_server.stream.hub import REVOKED, Session, SessionHub
from oma_server.wire.stream_codec import (
    decode_command_result,
    decode_event,
    decode_heartbeat,
    decode_hello,
    decode_progress,
    encode_outgoing,
)

HELLO_TIMEOUT_S = 30.0


class GatewayServicer(gateway_pb2_grpc.VmaGatewayServiceServicer):
    def __init__(self, hub: SessionHub) -> None:
        self.hub = hub

    async def Connect(
        self, request_iterator: AsyncIterator[gateway_pb2.ConnectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ConnectResponse]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT_S)
        except StopAsyncIteration:
            raise Unauthenticated("the stream closed before a Hello", reason="HELLO_MISSING") from None
        except TimeoutError:
            raise Unauthenticated(f"no Hello within {HELLO_TIMEOUT_S:.0f}s", reason="HELLO_MISSING") from None
        if first.WhichOneof("message") != "hello":
            raise Unauthenticated(
                "the first message on the stream must be a Hello",
                reason="HELLO_MISSING",
            )
        session, welcome = await self.hub.open(decode_hello(first.hello), context.peer(), peer_certificate(context))
        reader = asyncio.create_task(self._read(session, request_iterator), name=f"vma-reader-{session.session_id}")
        try:
            yield encode_outgoing(welcome)
            await self.hub.after_welcome(session)
            while (message := await session.queue.get()) is not None:
                yield encode_outgoing(message)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self.hub.close(session, session.close_reason or "the stream ended")
        if session.close_reason.startswith("replaced"):
            raise Aborted(session.close_reason, reason="SESSION_REPLACED", session_id=session.session_id)
        if session.close_reason == REVOKED:
            raise Unauthenticated(REVOKED, reason="APPLIANCE_REVOKED")
        if session.close_reason.startswith("the OMA is shutting down"):
            raise Unavailable(session.close_reason, reason="SERVER_SHUTTING_DOWN")

    async def _read(self, session: Session, request_iterator: AsyncIterator[gateway_pb2.ConnectRequest]) -> None:
        """Apply the appliance's messages in order, each decoded whole first: one that cannot be decoded is answered
        with a StreamError and changes nothing."""
        hub = self.hub
        try:
            async for request in request_iterator:
                hub.touch(session)
                kind = request.WhichOneof("message")
                try:
                    if kind == "progress":
                        await hub.on_progress(session, decode_progress(request.progress))
                    elif kind == "event":
                        await hub.on_event(session, decode_event(request.event))
                    elif kind == "command_result":
                        await hub.on_command_result(session, decode_command_result(request.command_result))
                    elif kind == "heartbeat":
                        await hub.on_heartbeat(session, decode_heartbeat(request.heartbeat))
                    elif kind == "hello":
                        raise MessageRejected("INVALID_MESSAGE", "a second Hello on an open stream is not allowed")
                    else:
                        raise MessageRejected("INVALID_MESSAGE", "an empty message; nothing was applied")
                except MessageRejected as rejected:
                    hub.reject(session, rejected)
            session.close("the appliance closed the stream")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            session.close(f"the stream broke: {type(exc).__name__}")
