"""Copy extents of a (snapshot) disk image into an NBD export with libnbd, several requests in flight.

A copy follows a *plan*: an ordered list of segments, each `(offset, length, kind)` where kind is `data` (read from
the source and write) or `zero` (make the target read as zeros there). A full copy's plan is the allocated extents of
the snapshot (SEEK_DATA/SEEK_HOLE), plus — when the target is not known to be fresh — the holes as `zero` segments;
an incremental copy's plan is the changed extents. Data segments are cut into chunks (default 2 MiB); an all-zero
chunk is skipped when the target is fresh (a new volume reads as zeros) and zeroed with NBD WRITE_ZEROES otherwise.

`DiskCopier.run()` blocks: call it in a worker thread (`asyncio.to_thread`). It keeps up to `window` requests in
flight with libnbd's `aio_pwrite`/`aio_zero` and `poll`, reports progress through a thread-safe snapshot
(`progress()`) and an optional callback, stops at `cancel.set()` after draining what is in flight, and flushes the
target at the end.

Resume points: writes complete out of order, so the resume point is the end of the longest prefix of the plan whose
writes all completed — and, when the export supports flush, were flushed (a checkpoint flush is issued every
`checkpoint_interval_s`). `ResumePoint.encode()` is the opaque DiskProgress.resume_token; it names the plan it belongs
to (a hash of the segments), so a token is never applied to a different plan.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from vma_client_stubs.agent.extents import Extent, complement, merge

MIB = 1 << 20
DEFAULT_CHUNK = 2 * MIB
DEFAULT_WINDOW = 8
ZERO_CHUNK = 16 * MIB  # largest single WRITE_ZEROES request
#: how long a refused or reset connection is tried again, the first pause (doubling up to CONNECT_RETRY_MAX_S): the
#: OMA restarts nbd-server to apply every export change (oma_server/nbd), and a connection caught in that moment is
#: refused or reset; at 50 VMs through one OMA such moments follow each other for seconds
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


@dataclass
class _Chunk:
    index: int
    offset: int  # offset inside the segment
    length: int
    end_point: ResumePoint
    buffer: bytearray | None = None
    keep: Any = None  # a buffer that must outlive the request but does not return to the pool
    done: bool = False
    error: int = 0


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
        cancel: threading.Event | None = None,
        connect_deadline_s: float = CONNECT_DEADLINE_S,
        on_progress: Callable[[CopyProgress], None] | None = None,
        progress_interval_s: float = 0.1,
        checkpoint_interval_s: float = 1.0,
        max_bytes_per_second: float | None = None,
    ) -> None:
        if not (4096 <= chunk_size <= 32 * MIB) or chunk_size % 4096:
            raise ValueError("chunk_size must be a multiple of 4 KiB between 4 KiB and 32 MiB")
        if window < 1:
            raise ValueError("window must be at least 1")
        if resume is not None:
            resume.check(plan)
        self.source = Path(source)
        self.nbd_uri = nbd_uri
        self.plan = plan
        self.fresh_target = fresh_target
        self.resume = resume or ResumePoint(plan.plan_id)
        self.chunk_size = chunk_size
        self.window = window
        self.cancel = cancel or threading.Event()
        self.connect_deadline_s = connect_deadline_s
        self.on_progress = on_progress
        self.progress_interval_s = progress_interval_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self.max_bytes_per_second = max_bytes_per_second
        self._lock = threading.Lock()
        self._progress = CopyProgress(
            bytes_total=plan.total_bytes,
            bytes_done=self.resume.done,
            resume_from=self.resume.done,
            resume_token=self.resume.encode(),
        )
        self._pool: list[bytearray] = []
        self._requests = 0

    def progress(self) -> CopyProgress:
        """A copy of the current progress; safe from any thread."""
        with self._lock:
            return CopyProgress(**vars(self._progress))

    # ---- the copy -------------------------------------------------------------------------------------------
    def _chunks(self) -> Iterator[_Chunk]:
        segments = self.plan.segments
        done = self.resume.done
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
                yield _Chunk(index, pos, n, end)
                pos += n

    def _connect(self, nbd: Any) -> Any:
        """A connected handle; a refused or reset connection is tried again until CONNECT_DEADLINE_S (nothing was
        written yet)."""
        deadline = time.monotonic() + self.connect_deadline_s
        pause = CONNECT_RETRY_S
        attempt = 0
        while True:
            attempt += 1
            handle = nbd.NBD()
            try:
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
        import nbd  # Debian python3-libnbd

        started = time.monotonic()
        handle = self._connect(nbd)
        try:
            size = handle.get_size()
            if size < self.plan.end:
                raise TargetTooSmall(
                    f"export {_redact(self.nbd_uri)} is {size} bytes, smaller than the {self.plan.end} bytes to write"
                )
            can_zero = handle.can_zero()
            can_flush = handle.can_flush()
            try:
                fd = os.open(self.source, os.O_RDONLY)
            except OSError as exc:
                raise SourceReadFailed(f"cannot open source {self.source}: {exc}") from exc
            try:
                cancelled = self._copy(handle, fd, can_zero, can_flush, started)
            finally:
                os.close(fd)
            flushed = False
            if not cancelled and can_flush:
                try:
                    handle.flush()
                except nbd.Error as exc:
                    raise TargetWriteFailed(f"flush of {_redact(self.nbd_uri)} failed: {exc}") from exc
                flushed = True
            with self._lock:
                self._progress.elapsed_s = time.monotonic() - started
                if not cancelled:
                    self._progress.resume_token = ResumePoint(
                        self.plan.plan_id, len(self.plan.segments), 0, self.plan.total_bytes
                    ).encode()
                result = CopyResult(**vars(self._progress), flushed=flushed, requests=self._requests)
            if self.on_progress is not None:
                self.on_progress(result)
            if cancelled:
                raise CopyCancelled("the copy was cancelled", result)
            return result
        finally:
            try:
                handle.shutdown()
            except nbd.Error:
                pass
            del handle

    def _copy(self, handle: Any, fd: int, can_zero: bool, can_flush: bool, started: float) -> bool:
        """Issue every chunk with a bounded window; True if cancelled."""
        import nbd

        pending: deque[_Chunk] = deque()  # issued or skipped chunks, in plan order
        flush_state: dict[str, Any] = {"inflight": False, "point": None, "error": 0}
        last_checkpoint = time.monotonic()
        last_report = 0.0
        zero_buffer = bytes(self.chunk_size)
        failure: list[str] = []

        def completion(chunk: _Chunk) -> Callable[[Any], int]:
            def done(err: Any) -> int:
                chunk.error = int(err.value) if hasattr(err, "value") else int(err)
                chunk.done = True
                if chunk.buffer is not None:
                    self._pool.append(chunk.buffer)
                    chunk.buffer = None
                return 1

            return done

        def flush_done(err: Any) -> int:
            code = int(err.value) if hasattr(err, "value") else int(err)
            flush_state["inflight"] = False
            if code:
                flush_state["error"] = code
            elif flush_state["point"] is not None:
                with self._lock:
                    self._progress.resume_token = flush_state["point"].encode()
            return 1

        def retire() -> None:
            """Advance the completed prefix; raise on a failed write."""
            advanced: _Chunk | None = None
            while pending and pending[0].done:
                chunk = pending.popleft()
                if chunk.error:
                    seg = self.plan.segments[chunk.index]
                    failure.append(
                        f"write of {chunk.length} bytes at offset {seg.offset + chunk.offset} failed: "
                        f"{os.strerror(chunk.error)}"
                    )
                    return
                advanced = chunk
            if advanced is not None:
                with self._lock:
                    self._progress.bytes_done = advanced.end_point.done
                    if not can_flush:
                        self._progress.resume_token = advanced.end_point.encode()

        def report(force: bool = False) -> None:
            nonlocal last_report
            now = time.monotonic()
            with self._lock:
                self._progress.elapsed_s = now - started
            if self.on_progress is not None and (force or now - last_report >= self.progress_interval_s):
                last_report = now
                self.on_progress(self.progress())

        def checkpoint() -> None:
            nonlocal last_checkpoint
            now = time.monotonic()
            if not can_flush or flush_state["inflight"] or now - last_checkpoint < self.checkpoint_interval_s:
                return
            last_checkpoint = now
            with self._lock:
                done = self._progress.bytes_done
            point = self._point_at(done)
            flush_state["inflight"] = True
            flush_state["point"] = point
            handle.aio_flush(completion=flush_done)

        def wait_some(timeout_ms: int = 500) -> None:
            handle.poll(timeout_ms)
            retire()

        def check_failure() -> None:
            if failure:
                raise TargetWriteFailed(failure[0])
            if flush_state["error"]:
                raise TargetWriteFailed(f"flush failed: {os.strerror(flush_state['error'])}")

        cancelled = False
        issued = 0
        try:
            for chunk in self._chunks():
                if self.cancel.is_set():
                    cancelled = True
                    break
                while handle.aio_in_flight() >= self.window:
                    wait_some()
                    check_failure()
                seg = self.plan.segments[chunk.index]
                target_offset = seg.offset + chunk.offset
                pending.append(chunk)
                if seg.kind == "zero":
                    self._zero(handle, chunk, target_offset, can_zero, zero_buffer, completion)
                else:
                    buf = self._pool.pop() if self._pool else bytearray(self.chunk_size)
                    view = memoryview(buf)[: chunk.length]
                    try:
                        n = os.preadv(fd, [view], target_offset)
                    except OSError as exc:
                        raise SourceReadFailed(f"read of {self.source} at {target_offset} failed: {exc}") from exc
                    if n < chunk.length:  # past the end of a sparse file: zeros
                        view[n:] = bytes(chunk.length - n)
                    if view == zero_buffer[: chunk.length]:
                        self._pool.append(buf)
                        if self.fresh_target:
                            chunk.done = True
                            with self._lock:
                                self._progress.bytes_skipped += chunk.length
                        else:
                            self._zero(handle, chunk, target_offset, can_zero, zero_buffer, completion)
                    else:
                        chunk.buffer = buf
                        handle.aio_pwrite(nbd.Buffer.from_buffer(view), target_offset, completion=completion(chunk))
                        self._requests += 1
                        with self._lock:
                            self._progress.bytes_written += chunk.length
                issued += chunk.length
                retire()
                check_failure()
                checkpoint()
                report()
                if self.max_bytes_per_second:
                    ahead = issued / self.max_bytes_per_second - (time.monotonic() - started)
                    while ahead > 0 and not self.cancel.is_set():
                        time.sleep(min(ahead, 0.05))
                        wait_some(0)
                        checkpoint()
                        report()
                        ahead = issued / self.max_bytes_per_second - (time.monotonic() - started)
            # Drain (after a cancel too: what is in flight completes, so the resume point is exact).
            deadline = time.monotonic() + 30.0
            while handle.aio_in_flight() > 0:
                wait_some()
                if time.monotonic() > deadline:
                    raise TargetWriteFailed(f"{handle.aio_in_flight()} requests did not complete within 30 s")
            retire()
            check_failure()
        except nbd.Error as exc:
            raise TargetWriteFailed(f"NBD request to {_redact(self.nbd_uri)} failed: {exc}") from exc
        if cancelled and can_flush:
            # Make the completed prefix durable so the resume point of a cancelled copy is exact.
            try:
                handle.flush()
                with self._lock:
                    self._progress.resume_token = self._point_at(self._progress.bytes_done).encode()
            except nbd.Error:
                pass
        report(force=True)
        return cancelled

    def _zero(
        self,
        handle: Any,
        chunk: _Chunk,
        offset: int,
        can_zero: bool,
        zero_buffer: bytes,
        completion: Callable[[_Chunk], Callable[[Any], int]],
    ) -> None:
        import nbd

        if can_zero:
            handle.aio_zero(chunk.length, offset, completion=completion(chunk))
        else:  # no WRITE_ZEROES: write zero bytes
            data = bytearray(chunk.length)
            chunk.keep = data
            handle.aio_pwrite(nbd.Buffer.from_buffer(data), offset, completion=completion(chunk))
        self._requests += 1
        with self._lock:
            self._progress.bytes_zeroed += chunk.length

    def _point_at(self, done: int) -> ResumePoint:
        """The resume point after `done` bytes of the plan."""
        remaining = done
        for index, seg in enumerate(self.plan.segments):
            if remaining < seg.length:
                return ResumePoint(self.plan.plan_id, index, remaining, done)
            remaining -= seg.length
        return ResumePoint(self.plan.plan_id, len(self.plan.segments), 0, done)


def _redact(uri: str) -> str:
    parsed = urlparse(uri)
    return uri if not parsed.password else uri.replace(parsed.password, "***")
