"""Copy extents of a (snapshot) disk image into an NBD export with libnbd: several connections, several requests each.

A copy follows a *plan*: an ordered list of segments, each `(offset, length, kind)` where kind is `data` (read from
the source and write) or `zero` (make the target read as zeros there). A full copy's plan is the allocated extents of
the snapshot (SEEK_DATA/SEEK_HOLE: holes are never read), plus — when the target is not known to be fresh — the holes
as `zero` segments; an incremental copy's plan is the changed extents. Data segments are cut into chunks (default
2 MiB, 4 KiB aligned); each chunk is read once, and an all-zero chunk is skipped when the target is fresh (a new
volume reads as zeros) or sent as NBD WRITE_ZEROES otherwise — never written as data.

`DiskCopier.run()` blocks: call it in a worker thread (`asyncio.to_thread`). When the export advertises multi-conn
(both nbd-server and nbdkit's file plugin do), it opens `connections` libnbd handles, one worker thread each; the
workers take chunks from one shared cursor in plan order and keep up to `window` requests in flight per connection
with `aio_pwrite`/`aio_zero` and `poll`. The GIL is released while a worker reads the source or sits in libnbd, so
reading, sending and the server's writes overlap (one thread alone serialised them: that was the measured limit,
see the README's data-path section). It reports progress through a thread-safe snapshot (`progress()`) and an
optional callback (called from the thread that runs `run()`, never from a worker), stops at `cancel.set()` after
draining what is in flight, and flushes the target at the end.

Resume points (`copy_plan.py`): the end of the longest prefix of the plan whose writes all completed — and, when the
export supports flush, were flushed (a checkpoint flush is issued every `checkpoint_interval_s`; under multi-conn a
flush on one connection covers the writes completed on all of them, which is what the flag promises).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vma_client_stubs.agent.copy_outcome import (
    CopyCancelled,
    CopyError,
    CopyProgress,
    CopyResult,
    InvalidResumeToken,
    SourceReadFailed,
    TargetConnectionLost,
    TargetTooSmall,
    TargetUnreachable,
    TargetWriteFailed,
    write_failure,
)
from vma_client_stubs.agent.copy_plan import (
    MIB,
    ZERO_CHUNK,
    Chunk,
    Ledger,
    Plan,
    ReadAhead,
    ResumePoint,
    Segment,
    chunks,
)
from vma_client_stubs.agent.rate_limit import TokenBucket
from vma_client_stubs.agent.source_hashes import SourceHasher

# The agent, the tests and the benchmarks import the copy's vocabulary from here.
__all__ = [
    "DEFAULT_CHUNK",
    "ZERO_CHUNK",
    "CopyCancelled",
    "CopyError",
    "CopyProgress",
    "CopyResult",
    "DiskCopier",
    "InvalidResumeToken",
    "Plan",
    "ResumePoint",
    "Segment",
    "SourceReadFailed",
    "TargetConnectionLost",
    "TargetTooSmall",
    "TargetUnreachable",
    "TargetWriteFailed",
    "TlsSettings",
]

DEFAULT_CHUNK = 2 * MIB
DEFAULT_WINDOW = 8  # requests in flight per connection
DEFAULT_CONNECTIONS = 4  # like nbdcopy's default; used only when the export advertises multi-conn
READ_AHEAD = 64 * MIB  # how many plan bytes ahead of the copy the source is read into the page cache
#: how long a refused or reset connection is tried again, the first pause (doubling up to CONNECT_RETRY_MAX_S): the
#: OMA's NBD server can be restarting (after a crash, or a forced removal: oma_server/nbd), and a connection caught
#: in that moment is refused or reset (nbd-server, before nbdkit, restarted at every export change)
MAX_STEPS = 256  # bounds take_replies' steps without waiting (each moves data or a reply; it ends when none can)
CONNECT_DEADLINE_S = 30.0
CONNECT_RETRY_S = 0.1
CONNECT_RETRY_MAX_S = 2.0


@dataclass(frozen=True)
class TlsSettings:
    """The appliance's own TLS credentials for the NBD connection (set on the handle, never taken from a URI)."""

    certificates_dir: Path | None = None  # ca-cert.pem, client-cert.pem, client-key.pem (libnbd's layout)
    psk_file: Path | None = None  # username:hexkey lines
    username: str = ""  # the PSK identity


@dataclass(frozen=True)
class _Caps:
    can_zero: bool
    can_flush: bool


class DiskCopier:
    """Copies one plan from `source` into the NBD export at `nbd_uri`. Use once; `run()` in a worker thread."""

    def __init__(
        self,
        source: Path | str,
        nbd_uri: str,
        plan: Plan,
        *,
        fresh_target: bool,
        resume: ResumePoint | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        window: int = DEFAULT_WINDOW,
        connections: int = DEFAULT_CONNECTIONS,
        cancel: threading.Event | None = None,
        connect_deadline_s: float = CONNECT_DEADLINE_S,
        on_progress: Callable[[CopyProgress], None] | None = None,
        progress_interval_s: float = 0.1,
        checkpoint_interval_s: float = 1.0,
        limits: Sequence[TokenBucket] = (),
        tls: TlsSettings | None = None,
        hasher: SourceHasher | None = None,
    ) -> None:
        if not (4096 <= chunk_size <= 32 * MIB) or chunk_size % 4096:
            raise ValueError("chunk_size must be a multiple of 4 KiB between 4 KiB and 32 MiB")
        if window < 1:
            raise ValueError("window must be at least 1")
        if not 1 <= connections <= 16:
            raise ValueError("connections must be between 1 and 16")
        if resume is not None:
            resume.check(plan)
        self.source = Path(source)
        self.nbd_uri = nbd_uri
        self.plan = plan
        self.fresh_target = fresh_target
        self.resume = resume or ResumePoint(plan.plan_id)
        self.chunk_size = chunk_size
        self.window = window
        self.connections = connections
        self.cancel = cancel or threading.Event()
        self.connect_deadline_s = connect_deadline_s
        self.on_progress = on_progress
        self.progress_interval_s = progress_interval_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self.limits = tuple(limits)  # data writes take their bytes from every one (the agent's shared buckets)
        self.tls = tls
        self.hasher = hasher  # the source's block hashes from the buffers read (source_hashes.py)
        self.prehashed_bytes = 0  # read again to hash what an interrupted run copied
        self._lock = threading.Lock()
        self._progress = CopyProgress(
            bytes_total=plan.total_bytes,
            bytes_done=self.resume.done,
            resume_from=self.resume.done,
            resume_token=self.resume.encode(),
        )
        self._requests = 0
        self._read_ahead = ReadAhead(plan, self.resume)  # how far the kernel was asked to read
        self._cursor: Iterator[Chunk] = iter(())
        self._failure: CopyError | None = None
        self._stop = threading.Event()  # a worker failed: the others stop taking chunks
        self._ledger = Ledger(self._lock, self._progress, self.resume)
        self.connections_used = 0

    def progress(self) -> CopyProgress:
        """A copy of the current progress; safe from any thread."""
        with self._lock:
            return CopyProgress(**vars(self._progress))

    # ---- the copy -------------------------------------------------------------------------------------------
    def _next_chunk(self, fd: int) -> Chunk | None:
        """The next chunk in plan order; also asks the kernel to start reading the plan's data up to `READ_AHEAD`
        plan bytes further on (only the plan's own data: an incremental's scattered extents, never the disk between)."""
        with self._lock:
            chunk = next(self._cursor, None)
            if chunk is None:
                return None
            start = chunk.end_point.done - chunk.length
            # The distance grows with the copy (4 MiB, then up to READ_AHEAD): a deep queue at once would delay the
            # first write behind 64 MiB of reads.
            ranges = self._read_ahead.ranges(start + min(READ_AHEAD, 4 * MIB + start - self.resume.done))
        for offset, length in ranges:
            # Asynchronous readahead: the disk works on the next reads while this worker sends (measured: cold-cache
            # copies went from well behind nbdcopy to its level; see the README's data-path section).
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        return chunk

    def _fail(self, error: CopyError) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = error
        self._stop.set()

    def _connect(self) -> Any:
        """A connected handle; a refused or reset connection is tried again until `connect_deadline_s` (nothing was
        written through it yet)."""
        import nbd  # Debian python3-libnbd

        deadline = time.monotonic() + self.connect_deadline_s
        pause = CONNECT_RETRY_S
        attempt = 0
        while True:
            attempt += 1
            handle = nbd.NBD()
            try:
                if self.tls is not None:
                    handle.set_tls(nbd.TLS_REQUIRE)
                    if self.tls.certificates_dir is not None:
                        handle.set_tls_certificates(str(self.tls.certificates_dir))
                    if self.tls.psk_file is not None:
                        handle.set_tls_psk_file(str(self.tls.psk_file))
                    if self.tls.username:
                        handle.set_tls_username(self.tls.username)
                handle.connect_uri(self.nbd_uri)
                return handle
            except nbd.Error as exc:
                wait = min(pause, deadline - time.monotonic())
                if wait <= 0 or self.cancel.wait(wait):
                    raise TargetUnreachable(
                        f"cannot connect to {_redact(self.nbd_uri)} ({attempt} attempt(s) in "
                        f"{self.connect_deadline_s:g}s): {exc}"
                    ) from exc
                pause = min(pause * 2, CONNECT_RETRY_MAX_S)

    def run(self) -> CopyResult:
        """Copy (blocking). Raises CopyCancelled, TargetUnreachable, TargetWriteFailed or SourceReadFailed."""
        import nbd

        started = time.monotonic()
        handles = [self._connect()]
        fd = -1
        try:
            caps = self._open_connections(handles)
            try:
                fd = os.open(self.source, os.O_RDONLY)
            except OSError as exc:
                raise SourceReadFailed(f"cannot open source {self.source}: {exc}") from exc
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            if self.hasher is not None and self.resume.done:
                self.prehashed_bytes = self.hasher.prehash(fd, self.plan, self.resume, self.chunk_size)
            self._cursor = chunks(self.plan, self.resume, self.chunk_size)
            cancelled = self._copy(handles, fd, caps, started)
            result = self._finish(handles, caps, cancelled, started)
            if self.on_progress is not None:
                self.on_progress(result)
            if cancelled:
                raise CopyCancelled("the copy was cancelled", result)
            return result
        finally:
            if fd >= 0:
                os.close(fd)
            for handle in handles:
                try:
                    handle.shutdown()
                except nbd.Error:
                    pass
            handles.clear()

    def _open_connections(self, handles: list[Any]) -> _Caps:
        """Check the export's size on the first connection, then open the others (appended to `handles`)."""
        first = handles[0]
        size = first.get_size()
        if size < self.plan.end:
            raise TargetTooSmall(
                f"export {_redact(self.nbd_uri)} is {size} bytes, smaller than the {self.plan.end} bytes to write"
            )
        caps = _Caps(can_zero=first.can_zero(), can_flush=first.can_flush())
        # More connections only where the server promises they see one another's writes (and flushes).
        wanted = self.connections if first.can_multi_conn() else 1
        while len(handles) < wanted:
            handles.append(self._connect())
        self.connections_used = len(handles)
        return caps

    def _finish(self, handles: list[Any], caps: _Caps, cancelled: bool, started: float) -> CopyResult:
        """Flush the target and make the result; a cancelled copy's resume point is what was drained and flushed."""
        import nbd

        flushed = False
        if caps.can_flush:
            try:
                handles[0].flush()  # under multi-conn this covers the writes of every connection
            except nbd.Error as exc:
                if not cancelled:
                    raise write_failure(f"flush of {_redact(self.nbd_uri)} failed: {exc}", exc.errnum) from exc
            else:
                flushed = not cancelled
                with self._lock:  # a cancelled copy's resume point is exact: drained, then flushed
                    self._progress.resume_token = self._ledger.point.encode()
        with self._lock:
            self._progress.elapsed_s = time.monotonic() - started
            if not cancelled:
                self._progress.resume_token = ResumePoint(
                    self.plan.plan_id, len(self.plan.segments), 0, self.plan.total_bytes
                ).encode()
            return CopyResult(
                **vars(self._progress),
                flushed=flushed,
                requests=self._requests,
                extra={"connections": len(handles)},
            )

    def _copy(self, handles: list[Any], fd: int, caps: _Caps, started: float) -> bool:
        """Run one worker thread per connection until the plan is done, cancelled or failed; True if cancelled."""
        workers = [
            threading.Thread(target=self._worker, args=(i, h, fd, caps), name=f"copier-{i}", daemon=True)
            for i, h in enumerate(handles)
        ]
        for worker in workers:
            worker.start()
        last_report = 0.0
        wait_s = self.progress_interval_s if self.on_progress is not None else 0.5
        while alive := [w for w in workers if w.is_alive()]:
            alive[0].join(max(wait_s, 0.001))
            now = time.monotonic()
            if self.on_progress is not None and now - last_report >= self.progress_interval_s:
                last_report = now
                with self._lock:
                    self._progress.elapsed_s = now - started
                self.on_progress(self.progress())
        if self._failure is not None:
            raise self._failure
        return self.cancel.is_set() and self._ledger.point.done < self.plan.total_bytes

    def _worker(self, index: int, handle: Any, fd: int, caps: _Caps) -> None:
        import nbd

        try:
            _Connection(self, index, handle, fd, caps).run()
        except CopyError as exc:
            self._fail(exc)
        except nbd.Error as exc:
            self._fail(write_failure(f"NBD request to {_redact(self.nbd_uri)} failed: {exc}", exc.errnum))
        except Exception as exc:  # a bug must not hang the copy: stop everything and report it
            self._fail(CopyError(f"copier worker {index} failed: {type(exc).__name__}: {exc}"))


class _Connection:
    """One NBD connection's request pipeline: take chunks in plan order, read them, send WRITE or WRITE_ZEROES (or
    skip a zero chunk on a fresh target), keep up to `window` requests in flight, reuse a buffer when its write
    completes, and drain at the end; connection 0 also issues the checkpoint flushes. Runs on its own thread."""

    def __init__(self, copier: DiskCopier, index: int, handle: Any, fd: int, caps: _Caps) -> None:
        import nbd

        self.copier = copier
        self.index = index
        self.handle = handle
        self.fd = fd
        self.caps = caps
        self.nbd_buffer = nbd.Buffer
        self.pool: list[bytearray] = []  # this connection's buffers: completions run on this thread only
        self.zero_buffer = bytes(copier.chunk_size)
        self.durable = not caps.can_flush
        self.flush_inflight = False
        self.flush_point: ResumePoint | None = None
        self.last_checkpoint = time.monotonic()

    def run(self) -> None:
        copier, handle = self.copier, self.handle
        while not (copier.cancel.is_set() or copier._stop.is_set()):
            while handle.aio_in_flight() >= copier.window and not copier._stop.is_set():
                handle.poll(500)
            chunk = copier._next_chunk(self.fd)
            if chunk is None:
                break
            self.send(chunk)
            # Take in the replies that have arrived (without waiting): a write counts as done, and its buffer is free,
            # when its reply is read — otherwise only once the window is full (the first 16 MiB of every connection).
            self.take_replies()
        # Drain (after a cancel or a sibling's failure too: what is in flight completes, so the resume point is exact).
        deadline = time.monotonic() + 30.0
        while handle.aio_in_flight() > 0:
            handle.poll(500)
            if time.monotonic() > deadline:
                raise TargetConnectionLost(f"{handle.aio_in_flight()} requests did not complete within 30 s")

    def stopping(self) -> bool:
        return self.copier.cancel.is_set() or self.copier._stop.is_set()

    def take_replies(self) -> None:
        """Without waiting: send what the socket takes of the writes in flight, read the replies that arrived, and
        checkpoint when due. After each request, and while a rate limit holds this connection back.

        Until nothing is left to do, not one step: a step of libnbd's state machine moves only part of a 2 MiB
        write (over TLS much less than the socket would take), so one step per request left the socket idle while
        the next chunk was read or the rate limit waited — `bench.tls_cost`, same session: over TLS at a 119 MiB/s
        limit 114 MiB/s with one step, 118 with this; unlimited 0.72 of plaintext with one step, 0.79 with this."""
        for _ in range(MAX_STEPS):
            if not self.handle.aio_in_flight() or self.handle.poll(0) == 0:
                break
        self.checkpoint()

    def send(self, chunk: Chunk) -> None:
        copier = self.copier
        seg = copier.plan.segments[chunk.index]
        offset = seg.offset + chunk.offset
        if seg.kind == "zero":
            self.zero(chunk, offset)
            return
        buf = self.pool.pop() if self.pool else bytearray(copier.chunk_size)
        view = memoryview(buf)[: chunk.length]
        try:
            n = os.preadv(self.fd, [view], offset)
        except OSError as exc:
            raise SourceReadFailed(f"read of {copier.source} at {offset} failed: {exc}") from exc
        if n < chunk.length:  # past the end of a sparse file: zeros
            view[n:] = bytes(chunk.length - n)
        # bytes == bytes is one memcmp; a memoryview compared with bytes goes item by item (8 ms per 2 MiB).
        full = chunk.length == copier.chunk_size
        is_zero = buf == self.zero_buffer if full else view.tobytes() == bytes(chunk.length)
        if copier.hasher is not None:  # from the buffer just read: the source is never read twice
            copier.hasher.add(offset, view, zero=is_zero)
        if not is_zero:
            for bucket in copier.limits:  # only data crosses the uplink: zeros cost no bandwidth
                bucket.acquire(chunk.length, cancelled=self.stopping, idle=self.take_replies)
            self.handle.aio_pwrite(self.nbd_buffer.from_buffer(view), offset, completion=self.written(chunk, buf))
            with copier._lock:
                copier._requests += 1
                copier._progress.bytes_written += chunk.length
            return
        self.pool.append(buf)
        if copier.fresh_target:
            with copier._lock:
                copier._progress.bytes_skipped += chunk.length
            copier._ledger.complete(chunk, durable=self.durable)
        else:
            self.zero(chunk, offset)

    def zero(self, chunk: Chunk, offset: int) -> None:
        copier = self.copier
        if self.caps.can_zero:
            self.handle.aio_zero(chunk.length, offset, completion=self.written(chunk, None))
        else:  # no WRITE_ZEROES: write zero bytes
            data = bytearray(chunk.length)
            self.handle.aio_pwrite(self.nbd_buffer.from_buffer(data), offset, completion=self.written(chunk, data))
        with copier._lock:
            copier._requests += 1
            copier._progress.bytes_zeroed += chunk.length

    def written(self, chunk: Chunk, buffer: bytearray | None) -> Callable[[Any], int]:
        """The completion of one write: free its buffer, then fold the chunk into the resume point or fail the copy."""
        copier = self.copier

        def done(err: Any) -> int:
            code = int(err.value) if hasattr(err, "value") else int(err)
            if buffer is not None:
                self.pool.append(buffer)
            if code:
                seg = copier.plan.segments[chunk.index]
                what = f"write of {chunk.length} bytes at offset {seg.offset + chunk.offset} failed"
                copier._fail(write_failure(f"{what}: {os.strerror(code)}", code))
            else:
                copier._ledger.complete(chunk, durable=self.durable)
            return 1

        return done

    def checkpoint(self) -> None:
        # One connection issues the checkpoints; under multi-conn its flush covers every connection's writes.
        copier = self.copier
        now = time.monotonic()
        if (
            self.index
            or not self.caps.can_flush
            or self.flush_inflight
            or now - self.last_checkpoint < copier.checkpoint_interval_s
        ):
            return
        self.last_checkpoint = now
        with copier._lock:
            self.flush_point = copier._ledger.point
        self.flush_inflight = True
        self.handle.aio_flush(completion=self.flushed)

    def flushed(self, err: Any) -> int:
        code = int(err.value) if hasattr(err, "value") else int(err)
        self.flush_inflight = False
        if code:
            self.copier._fail(write_failure(f"flush failed: {os.strerror(code)}", code))
        else:
            assert self.flush_point is not None
            with self.copier._lock:
                self.copier._progress.resume_token = self.flush_point.encode()
        return 1


def _redact(uri: str) -> str:
    parsed = urlparse(uri)
    return uri if not parsed.password else uri.replace(parsed.password, "***")
