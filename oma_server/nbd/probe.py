"""A real NBD handshake against the NBD server, in asyncio (no subprocess, no blocking).

Fixed-newstyle negotiation (NBD protocol doc, "Newstyle negotiation"): read the greeting
(`NBDMAGIC`, `IHAVEOPT`, handshake flags), send client flags, ask NBD_OPT_LIST and collect the
NBD_REP_SERVER replies until NBD_REP_ACK, then NBD_OPT_ABORT. The export list tells the supervisor both that
the server answers and that it serves exactly the exports the manager configured. A server that hides its export
list (the secure default, see manager.py) answers NBD_OPT_LIST with an error reply: `ListingRefused`, which still
proves that it completed the handshake (and TLS with a verified client certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct

NBD_MAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
REP_ACK = 1
REP_SERVER = 2
REP_ERR_BIT = 1 << 31


_CLOSE_TIMEOUT_S = 1.0


class ProbeError(Exception):
    """The peer did not complete an NBD handshake; the message says at which step."""


class ListingRefused(ProbeError):
    """The handshake completed and the server refused NBD_OPT_LIST with an error reply (it hides its exports)."""


async def list_exports(host: str, port: int, *, timeout: float = 2.0, tls: ssl.SSLContext | None = None) -> list[str]:
    """Connect, negotiate fixed newstyle (with `tls`: upgrade with NBD_OPT_STARTTLS first, as a client of a server
    that verifies certificates must) and return the export names the server lists."""
    try:
        return await asyncio.wait_for(_list_exports(host, port, tls), timeout)
    except TimeoutError:
        raise ProbeError(f"NBD handshake with {host}:{port} timed out after {timeout:.1f}s") from None
    except (OSError, asyncio.IncompleteReadError) as exc:  # ssl.SSLError is an OSError
        raise ProbeError(f"NBD handshake with {host}:{port} failed: {exc!r}") from None


async def _option_reply(reader: asyncio.StreamReader, host: str, port: int, option: int) -> tuple[int, bytes]:
    magic, opt, rtype, length = struct.unpack(">QIII", await reader.readexactly(20))
    if magic != REPLY_MAGIC or opt != option:
        raise ProbeError(f"{host}:{port} sent a malformed option reply")
    return rtype, await reader.readexactly(length) if length else b""


async def _start_tls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int, tls: ssl.SSLContext
) -> None:
    writer.write(struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0))
    await writer.drain()
    rtype, _ = await _option_reply(reader, host, port, OPT_STARTTLS)
    if rtype != REP_ACK:
        raise ProbeError(f"{host}:{port} refused NBD_OPT_STARTTLS (reply {rtype & ~REP_ERR_BIT})")
    # The name the server certificate carries for a loopback or wildcard listener (ca.server_names).
    name = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    await writer.start_tls(tls, server_hostname=name)


async def _list_exports(host: str, port: int, tls: ssl.SSLContext | None) -> list[str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        greeting = await reader.readexactly(18)
        if greeting[:8] != NBD_MAGIC:
            raise ProbeError(f"{host}:{port} is not an NBD server (greeting {greeting[:8]!r})")
        (opt_magic,) = struct.unpack(">Q", greeting[8:16])
        if opt_magic != IHAVEOPT:
            raise ProbeError(f"{host}:{port} speaks oldstyle NBD, not newstyle")
        (hflags,) = struct.unpack(">H", greeting[16:18])
        if not hflags & FLAG_FIXED_NEWSTYLE:
            raise ProbeError(f"{host}:{port} does not offer fixed newstyle negotiation")
        writer.write(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)))
        if tls is not None:
            await _start_tls(reader, writer, host, port, tls)
        writer.write(struct.pack(">QII", IHAVEOPT, OPT_LIST, 0))
        await writer.drain()
        names: list[str] = []
        while True:
            rtype, data = await _option_reply(reader, host, port, OPT_LIST)
            if rtype == REP_ACK:
                break
            if rtype & REP_ERR_BIT:
                raise ListingRefused(f"{host}:{port} refused NBD_OPT_LIST (error reply {rtype & ~REP_ERR_BIT})")
            if rtype == REP_SERVER and len(data) >= 4:
                (nlen,) = struct.unpack(">I", data[:4])
                names.append(data[4 : 4 + nlen].decode("utf-8", "replace"))
        writer.write(struct.pack(">QII", IHAVEOPT, OPT_ABORT, 0))
        with contextlib.suppress(OSError):
            await writer.drain()
        return names
    finally:
        if tls is not None:
            # No TLS close_notify exchange: that would let nbdkit close the connection first, leaving a TIME_WAIT
            # on the NBD port itself (a restart of nbdkit does not mind; a bind without SO_REUSEADDR does).
            writer.transport.abort()
        else:
            writer.close()
        # Bounded: aborted in the middle of its TLS handshake (a timeout or a stop), the stream's protocol never
        # hears of the close — the TLS layer had not reached it yet — and wait_closed() would wait for good (the
        # socket itself is closed by the abort either way). tests/nbd/test_probe.py stalls a handshake.
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)


async def port_accepts(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds (something listens there)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
