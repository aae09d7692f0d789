"""The supervisor's NBD handshake probe (oma_server/nbd/probe.py) against servers that misbehave at each step: it
always answers within its timeout, with a ProbeError naming the step, and leaves no socket behind."""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from oma_server.nbd.probe import (
    FLAG_FIXED_NEWSTYLE,
    IHAVEOPT,
    NBD_MAGIC,
    OPT_STARTTLS,
    REP_ACK,
    REPLY_MAGIC,
    ProbeError,
    list_exports,
)

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
#: starts a server running `Serve` per connection; its port and the tasks of its connections
StartServer = Callable[[Serve], Awaitable[tuple[int, list[asyncio.Task[None]]]]]


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(NBD_MAGIC + struct.pack(">QH", IHAVEOPT, FLAG_FIXED_NEWSTYLE))
    await writer.drain()
    await reader.readexactly(4)  # the client's flags


def _stall_in_tls_handshake(hello: asyncio.Event) -> Serve:
    """A server that agrees to TLS, receives the ClientHello (`hello` set) and never answers it (a hung or
    overloaded nbdkit)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _greet(reader, writer)
        _, option, _ = struct.unpack(">QII", await reader.readexactly(16))
        assert option == OPT_STARTTLS
        writer.write(struct.pack(">QIII", REPLY_MAGIC, OPT_STARTTLS, REP_ACK, 0))
        await writer.drain()
        await reader.readexactly(1)  # the first byte of the ClientHello: the client waits for a ServerHello now
        hello.set()
        await reader.read()  # until the client goes away

    return serve


def _stall_after_greeting(hello: asyncio.Event) -> Serve:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _greet(reader, writer)
        await reader.read()

    return serve


@pytest.fixture
async def server() -> AsyncIterator[StartServer]:
    servers: list[asyncio.Server] = []

    async def start(serve: Serve) -> tuple[int, list[asyncio.Task[None]]]:
        handlers: list[asyncio.Task[None]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.append(task)
            try:
                await serve(reader, writer)
            finally:
                writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(srv)
        return srv.sockets[0].getsockname()[1], handlers

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


@pytest.mark.parametrize("stall", [_stall_in_tls_handshake, _stall_after_greeting], ids=["in-tls", "after-greeting"])
async def test_a_server_that_stalls_is_a_probe_error_within_the_timeout(
    server: StartServer, stall: Callable[[asyncio.Event], Serve]
) -> None:
    """A stall in the TLS handshake once hung the probe for good: cancelled by its timeout, it waited for the
    closing of a stream whose protocol never learns of it (the handshake had not reached it), so the supervisor —
    and a stop of the OMA waiting for it — hung."""
    port, handlers = await server(stall(asyncio.Event()))
    started = time.monotonic()
    with pytest.raises(ProbeError, match=r"timed out after 0\.5s"):
        await asyncio.wait_for(list_exports("127.0.0.1", port, timeout=0.5, tls=_client_tls()), 10)
    assert time.monotonic() - started < 5
    await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)  # the server saw the socket close


async def test_a_probe_cancelled_in_the_tls_handshake_ends_at_once(server: StartServer) -> None:
    """What a stop of the OMA does to a probe running then: the cancellation ends it, nothing waits on."""
    hello = asyncio.Event()
    port, handlers = await server(_stall_in_tls_handshake(hello))
    probe = asyncio.create_task(list_exports("127.0.0.1", port, timeout=30, tls=_client_tls()))
    await asyncio.wait_for(hello.wait(), 10)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(probe, 5)
    await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)
