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

Resume points: writes complete out of order and across connections, so the resume point is the end of the longest
prefix of the plan whose writes all completed — and, when the export supports flush, were flushed (a checkpoint
flush is issued every `checkpoint_interval_s`; under multi-conn a flush on one connection covers the writes completed
on all of them, which is what the flag promises). `ResumePoint.encode()` is the opaque DiskProgress.resume_token; it
names the plan it belongs to (a hash of the segments), so a token is never applied to a different plan.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from vma_client_stubs.agent.extents import Extent, complement, merge

MIB = 1 << 20
DEFAULT_CHUNK = 2 * MIB
DEFAULT_WINDOW = 8  # requests in flight per connection
DEFAULT_CONNECTIONS = 4  # like nbdcopy's default; used only when the export advertises multi-conn
ZERO_CHUNK = 16 * MIB  # largest single WRITE_ZEROES request
READ_AHEAD = 64 * MIB  # how many plan bytes ahead of the copy the source is read into the page cache
#: how long a refused or reset connection is tried again, the first pause (doubling up to CONNECT_RETRY_MAX_S): the
#: OMA's NBD server can be restarting (after a crash, or a forced removal: oma_server/nbd), and a connection caught
#: in that moment is refused or reset (nbd-server, before nbdkit, restarted at every export change)
CONNECT_DEADLINE_S = 30.0
CONNECT_RETRY_S = 0.1
CONNECT_RETRY_MAX_S = 2.0

SegmentKind = Literal["data", "zero"]


class CopyError(Exception):
    """Base of copy failures. `error_class` is the vma.v1.ErrorClass name suffix."""

    error_class = "INTERNAL"


class TargetUnreachable(CopyError):
    error_class = "TARGET_UNREACHABLE"


class TargetWriteFailed(CopyError):
    error_class = "TARGET_WRITE_FAILED"


class TargetTooSmall(TargetWriteFailed):
    """The export is smaller than the extents to write (the source disk grew and the volume did not)."""


class SourceReadFailed(CopyError):
    error_class = "SOURCE_UNAVAILABLE"


class InvalidResumeToken(CopyError):
    """The token is malformed or belongs to another plan; the copy must start over."""


class CopyCancelled(CopyError):
    """The copy stopped because it was cancelled; `result` holds what was done."""

    def __init__(self, message: str, result: CopyResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Segment:
    offset: int
    length: int
    kind: SegmentKind = "data"


@dataclass(frozen=True)
class Plan:
    """What to copy: ordered, non-overlapping segments of the source."""

    segments: tuple[Segment, ...]

    @classmethod
    def full(cls, allocated: Sequence[Extent], size: int, *, fresh_target: bool) -> Plan:
        """Every allocated extent; on a target that is not fresh, the holes are zeroed too."""
        data = [Segment(o, n, "data") for o, n in merge(allocated)]
        zeros = [] if fresh_target else [Segment(o, n, "zero") for o, n in complement(allocated, size)]
        return cls(tuple(sorted([*data, *zeros], key=lambda s: s.offset)))

    @classmethod
    def incremental(cls, changed: Sequence[Extent]) -> Plan:
        return cls(tuple(Segment(o, n, "data") for o, n in merge(changed)))

    @property
    def total_bytes(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def end(self) -> int:
        return max((s.offset + s.length for s in self.segments), default=0)

    @property
    def plan_id(self) -> str:
        digest = hashlib.sha256()
        for s in self.segments:
            digest.update(f"{s.offset}:{s.length}:{s.kind};".encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ResumePoint:
    """Everything of the plan before segment `index` + `offset` is written (and flushed when possible)."""

    plan_id: str
    index: int = 0
    offset: int = 0
    done: int = 0  # bytes of the plan before this point

    def encode(self) -> str:
        raw = json.dumps({"p": self.plan_id, "i": self.index, "o": self.offset, "d": self.done}, separators=(",", ":"))
        return "v1." + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> ResumePoint:
        try:
            version, _, body = token.partition(".")
            if version != "v1":
                raise ValueError(f"version {version!r}")
            raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            return cls(str(raw["p"]), int(raw["i"]), int(raw["o"]), int(raw["d"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidResumeToken(f"resume token {token[:40]!r} is not valid: {exc}") from exc

    def check(self, plan: Plan) -> None:
        """Raises InvalidResumeToken unless this point lies inside `plan`."""
        if self.plan_id != plan.plan_id:
            raise InvalidResumeToken(f"resume token is for plan {self.plan_id}, this copy's plan is {plan.plan_id}")
        segments = plan.segments
        if not (0 <= self.index <= len(segments)):
            raise InvalidResumeToken(f"resume token points at segment {self.index} of {len(segments)}")
        if self.index < len(segments) and not (0 <= self.offset < segments[self.index].length):
            raise InvalidResumeToken(f"resume token offset {self.offset} is outside segment {self.index}")
        expected = sum(s.length for s in segments[: self.index]) + self.offset
        if expected != self.done:
            raise InvalidResumeToken(f"resume token says {self.done} bytes done, the plan says {expected}")


@dataclass
class CopyProgress:
    """A consistent picture of a running copy (absolute figures for this copy of the disk)."""

    bytes_total: int = 0
    bytes_done: int = 0  # plan bytes whose writes completed (contiguous prefix)
    bytes_written: int = 0  # data bytes sent with WRITE by this run (not skipped, not zeroed)
    bytes_zeroed: int = 0  # bytes made zero with WRITE_ZEROES by this run
    bytes_skipped: int = 0  # zero bytes not sent at all (fresh target)
    resume_from: int = 0  # bytes of the plan already done when this run started
    resume_token: str = ""  # durable resume point (flushed when the target supports flush)
    elapsed_s: float = 0.0

    @property
    def throughput(self) -> float:
        """Plan bytes per second processed by this run."""
        return (self.bytes_done - self.resume_from) / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class CopyResult(CopyProgress):
    flushed: bool = False
    requests: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TlsSettings:
    """The appliance's own TLS credentials for the NBD connection (set on the handle, never taken from a URI)."""

    certificates_dir: Path | None = None  # ca-cert.pem, client-cert.pem, client-key.pem (libnbd's layout)
    psk_file: Path | None = None  # username:hexkey lines
    username: str = ""  # the PSK identity


@dataclass
class _Chunk:
    seq: int  # position in the plan's chunk order: the prefix of completed chunks is the resume point
    index: int  # segment index
    offset: int  # offset inside the segment
    length: int
    end_point: ResumePoint


@dataclass(frozen=True)
class _Caps:
    can_zero: bool
    can_flush: bool


class _Ledger:
    """Completed chunks, in any order, folded into the completed prefix of the plan (thread-safe)."""

    def __init__(self, copier: DiskCopier) -> None:
        self._copier = copier
        self._next = 0
        self._finished: dict[int, ResumePoint] = {}
        self.point = copier.resume  # end of the completed prefix

    def complete(self, chunk: _Chunk, *, durable: bool) -> None:
        """Record a completed chunk; `durable` when the export cannot flush (a completed write is all there is)."""
        with self._copier._lock:
            self._finished[chunk.seq] = chunk.end_point
            advanced = False
            while self._next in self._finished:
                self.point = self._finished.pop(self._next)
                self._next += 1
                advanced = True
            if advanced:
                self._copier._progress.bytes_done = self.point.done
                if durable:
                    self._copier._progress.resume_token = self.point.encode()


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
        max_bytes_per_second: float | None = None,
        tls: TlsSettings | None = None,
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
        self.max_bytes_per_second = max_bytes_per_second
        self.tls = tls
        self._lock = threading.Lock()
        self._progress = CopyProgress(
            bytes_total=plan.total_bytes,
            bytes_done=self.resume.done,
            resume_from=self.resume.done,
            resume_token=self.resume.encode(),
        )
        self._requests = 0
        self._issued = 0  # plan bytes handed to workers (for the rate limit)
        # Read-ahead cursor (segment index, offset in it, plan bytes before it): how far the kernel was asked to read.
        self._ra_index, self._ra_offset, self._ra_done = self.resume.index, self.resume.offset, self.resume.done
        self._cursor: Iterator[_Chunk] = iter(())
        self._failure: CopyError | None = None
        self._stop = threading.Event()  # a worker failed: the others stop taking chunks
        self._ledger = _Ledger(self)
        self.connections_used = 0

    def progress(self) -> CopyProgress:
        """A copy of the current progress; safe from any thread."""
        with self._lock:
            return CopyProgress(**vars(self._progress))

    # ---- the copy -------------------------------------------------------------------------------------------
    def _chunks(self) -> Iterator[_Chunk]:
        segments = self.plan.segments
        done = self.resume.done
        seq = 0
        for index in range(self.resume.index, len(segments)):
            seg = segments[index]
            start = self.resume.offset if index == self.resume.index else 0
            step = self.chunk_size if seg.kind == "data" else ZERO_CHUNK
            pos = start
            while pos < seg.length:
                n = min(step, seg.length - pos)
                done += n
                end = (
                    ResumePoint(self.plan.plan_id, index, pos + n, done)
                    if pos + n < seg.length
                    else ResumePoint(self.plan.plan_id, index + 1, 0, done)
                )
                yield _Chunk(seq, index, pos, n, end)
                seq += 1
                pos += n

    def _next_chunk(self, fd: int) -> _Chunk | None:
        """The next chunk in plan order; also asks the kernel to start reading the plan's data up to `READ_AHEAD`
        plan bytes further on (only the plan's own data: an incremental's scattered extents, never the disk between)."""
        with self._lock:
            chunk = next(self._cursor, None)
            if chunk is None:
                return None
            self._issued += chunk.length
            start = chunk.end_point.done - chunk.length
            # The distance grows with the copy (4 MiB, then up to READ_AHEAD): a deep queue at once would delay the
            # first write behind 64 MiB of reads.
            ranges = self._read_ahead_ranges(start + min(READ_AHEAD, 4 * MIB + start - self.resume.done))
        for offset, length in ranges:
            # Asynchronous readahead: the disk works on the next reads while this worker sends (measured: cold-cache
            # copies went from well behind nbdcopy to its level; see the README's data-path section).
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        return chunk

    def _read_ahead_ranges(self, until: int) -> list[Extent]:
        """Source ranges of the plan data from the read-ahead cursor up to plan position `until`. Lock held."""
        ranges: list[Extent] = []
        segments = self.plan.segments
        while self._ra_done < until and self._ra_index < len(segments):
            seg = segments[self._ra_index]
            n = min(seg.length - self._ra_offset, until - self._ra_done)
            if seg.kind == "data":
                ranges.append((seg.offset + self._ra_offset, n))
            self._ra_offset += n
            self._ra_done += n
            if self._ra_offset == seg.length:
                self._ra_index, self._ra_offset = self._ra_index + 1, 0
        return ranges

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
            try:
                fd = os.open(self.source, os.O_RDONLY)
            except OSError as exc:
                raise SourceReadFailed(f"cannot open source {self.source}: {exc}") from exc
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            self._cursor = self._chunks()
            cancelled = self._copy(handles, fd, caps, started)
            flushed = False
            if caps.can_flush:
                try:
                    first.flush()  # under multi-conn this covers the writes of every connection
                except nbd.Error as exc:
                    if not cancelled:
                        raise TargetWriteFailed(f"flush of {_redact(self.nbd_uri)} failed: {exc}") from exc
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
                result = CopyResult(
                    **vars(self._progress),
                    flushed=flushed,
                    requests=self._requests,
                    extra={"connections": len(handles)},
                )
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

    def _copy(self, handles: list[Any], fd: int, caps: _Caps, started: float) -> bool:
        """Run one worker thread per connection until the plan is done, cancelled or failed; True if cancelled."""
        workers = [
            threading.Thread(target=self._worker, args=(i, h, fd, caps, started), name=f"copier-{i}", daemon=True)
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

    def _worker(self, index: int, handle: Any, fd: int, caps: _Caps, started: float) -> None:
        import nbd

        try:
            self._work(index, handle, fd, caps, started)
        except CopyError as exc:
            self._fail(exc)
        except nbd.Error as exc:
            self._fail(TargetWriteFailed(f"NBD request to {_redact(self.nbd_uri)} failed: {exc}"))
        except Exception as exc:  # a bug must not hang the copy: stop everything and report it
            self._fail(CopyError(f"copier worker {index} failed: {type(exc).__name__}: {exc}"))

    def _work(self, index: int, handle: Any, fd: int, caps: _Caps, started: float) -> None:
        import nbd

        pool: list[bytearray] = []  # this connection's buffers: completions run on this thread only
        zero_buffer = bytes(self.chunk_size)
        durable = not caps.can_flush
        flush: dict[str, Any] = {"inflight": False, "point": None}
        last_checkpoint = time.monotonic()

        def written(chunk: _Chunk, buffer: bytearray | None) -> Callable[[Any], int]:
            def done(err: Any) -> int:
                code = int(err.value) if hasattr(err, "value") else int(err)
                if buffer is not None:
                    pool.append(buffer)
                if code:
                    seg = self.plan.segments[chunk.index]
                    self._fail(
                        TargetWriteFailed(
                            f"write of {chunk.length} bytes at offset {seg.offset + chunk.offset} failed: "
                            f"{os.strerror(code)}"
                        )
                    )
                else:
                    self._ledger.complete(chunk, durable=durable)
                return 1

            return done

        def flushed(err: Any) -> int:
            code = int(err.value) if hasattr(err, "value") else int(err)
            flush["inflight"] = False
            if code:
                self._fail(TargetWriteFailed(f"flush failed: {os.strerror(code)}"))
            else:
                with self._lock:
                    self._progress.resume_token = flush["point"].encode()
            return 1

        def checkpoint() -> None:
            # One connection issues the checkpoints; under multi-conn its flush covers every connection's writes.
            nonlocal last_checkpoint
            now = time.monotonic()
            if index or not caps.can_flush or flush["inflight"] or now - last_checkpoint < self.checkpoint_interval_s:
                return
            last_checkpoint = now
            with self._lock:
                flush["point"] = self._ledger.point
            flush["inflight"] = True
            handle.aio_flush(completion=flushed)

        def zero(chunk: _Chunk, offset: int) -> None:
            if caps.can_zero:
                handle.aio_zero(chunk.length, offset, completion=written(chunk, None))
            else:  # no WRITE_ZEROES: write zero bytes
                data = bytearray(chunk.length)
                handle.aio_pwrite(nbd.Buffer.from_buffer(data), offset, completion=written(chunk, data))
            with self._lock:
                self._requests += 1
                self._progress.bytes_zeroed += chunk.length

        while not (self.cancel.is_set() or self._stop.is_set()):
            while handle.aio_in_flight() >= self.window and not self._stop.is_set():
                handle.poll(500)
            chunk = self._next_chunk(fd)
            if chunk is None:
                break
            seg = self.plan.segments[chunk.index]
            offset = seg.offset + chunk.offset
            if seg.kind == "zero":
                zero(chunk, offset)
            else:
                buf = pool.pop() if pool else bytearray(self.chunk_size)
                view = memoryview(buf)[: chunk.length]
                try:
                    n = os.preadv(fd, [view], offset)
                except OSError as exc:
                    raise SourceReadFailed(f"read of {self.source} at {offset} failed: {exc}") from exc
                if n < chunk.length:  # past the end of a sparse file: zeros
                    view[n:] = bytes(chunk.length - n)
                # bytes == bytes is one memcmp; a memoryview compared with bytes goes item by item (8 ms per 2 MiB).
                full = chunk.length == self.chunk_size
                is_zero = buf == zero_buffer if full else view.tobytes() == bytes(chunk.length)
                if is_zero:
                    pool.append(buf)
                    if self.fresh_target:
                        with self._lock:
                            self._progress.bytes_skipped += chunk.length
                        self._ledger.complete(chunk, durable=durable)
                    else:
                        zero(chunk, offset)
                else:
                    handle.aio_pwrite(nbd.Buffer.from_buffer(view), offset, completion=written(chunk, buf))
                    with self._lock:
                        self._requests += 1
                        self._progress.bytes_written += chunk.length
            # Take in the replies that have arrived (without waiting): a write counts as done, and its buffer is free,
            # when its reply is read — otherwise only once the window is full (the first 16 MiB of every connection).
            handle.poll(0)
            checkpoint()
            if self.max_bytes_per_second:
                self._pace(handle, started, checkpoint)
        # Drain (after a cancel or a sibling's failure too: what is in flight completes, so the resume point is exact).
        deadline = time.monotonic() + 30.0
        while handle.aio_in_flight() > 0:
            handle.poll(500)
            if time.monotonic() > deadline:
                raise TargetWriteFailed(f"{handle.aio_in_flight()} requests did not complete within 30 s")

    def _pace(self, handle: Any, started: float, checkpoint: Callable[[], None]) -> None:
        """Hold this worker back while the copy is ahead of `max_bytes_per_second` (shared by all connections)."""
        assert self.max_bytes_per_second
        while not (self.cancel.is_set() or self._stop.is_set()):
            with self._lock:
                issued = self._issued
            ahead = issued / self.max_bytes_per_second - (time.monotonic() - started)
            if ahead <= 0:
                return
            time.sleep(min(ahead, 0.05))
            if handle.aio_in_flight():
                handle.poll(0)
            checkpoint()


def _redact(uri: str) -> str:
    parsed = urlparse(uri)
    return uri if not parsed.password else uri.replace(parsed.password, "***")
