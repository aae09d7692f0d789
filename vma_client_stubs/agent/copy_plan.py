"""A copy's plan and where it stands: segments to copy, the chunks they are cut into, resume points.

A plan is an ordered list of segments, each `(offset, length, kind)` where kind is `data` (read from the source and
write) or `zero` (make the target read as zeros there). Data segments are cut into chunks of the copy's chunk size,
zero segments into chunks of at most `ZERO_CHUNK`. Writes complete out of order, so the resume point is the end of the
longest prefix of chunks that all completed (`Ledger`); `ResumePoint.encode()` is the opaque
DiskProgress.resume_token and names its plan (a hash of the segments), so a token is never applied to another plan.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from vma_client_stubs.agent.copy_outcome import CopyProgress, InvalidResumeToken
from vma_client_stubs.agent.extents import Extent, complement, merge

MIB = 1 << 20
ZERO_CHUNK = 16 * MIB  # largest single WRITE_ZEROES request

SegmentKind = Literal["data", "zero"]


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
class Chunk:
    seq: int  # position in the plan's chunk order: the prefix of completed chunks is the resume point
    index: int  # segment index
    offset: int  # offset inside the segment
    length: int
    end_point: ResumePoint


def chunks(plan: Plan, resume: ResumePoint, chunk_size: int) -> Iterator[Chunk]:
    """The plan's chunks from `resume` on, in plan order."""
    segments = plan.segments
    done = resume.done
    seq = 0
    for index in range(resume.index, len(segments)):
        seg = segments[index]
        start = resume.offset if index == resume.index else 0
        step = chunk_size if seg.kind == "data" else ZERO_CHUNK
        pos = start
        while pos < seg.length:
            n = min(step, seg.length - pos)
            done += n
            end = (
                ResumePoint(plan.plan_id, index, pos + n, done)
                if pos + n < seg.length
                else ResumePoint(plan.plan_id, index + 1, 0, done)
            )
            yield Chunk(seq, index, pos, n, end)
            seq += 1
            pos += n


class ReadAhead:
    """A cursor over the plan's data ahead of the copy (segment index, offset in it, plan bytes before it): the source
    ranges the kernel is asked to read next — only the plan's own data, never the disk between its extents."""

    def __init__(self, plan: Plan, resume: ResumePoint) -> None:
        self._segments = plan.segments
        self._index, self._offset, self._done = resume.index, resume.offset, resume.done

    def ranges(self, until: int) -> list[Extent]:
        """Source ranges of the plan data from the cursor up to plan position `until` (caller holds the lock)."""
        ranges: list[Extent] = []
        segments = self._segments
        while self._done < until and self._index < len(segments):
            seg = segments[self._index]
            n = min(seg.length - self._offset, until - self._done)
            if seg.kind == "data":
                ranges.append((seg.offset + self._offset, n))
            self._offset += n
            self._done += n
            if self._offset == seg.length:
                self._index, self._offset = self._index + 1, 0
        return ranges


class Ledger:
    """Completed chunks, in any order, folded into the completed prefix of the plan (under the copy's lock)."""

    def __init__(self, lock: threading.Lock, progress: CopyProgress, resume: ResumePoint) -> None:
        self._lock = lock
        self._progress = progress
        self._next = 0
        self._finished: dict[int, ResumePoint] = {}
        self.point = resume  # end of the completed prefix

    def complete(self, chunk: Chunk, *, durable: bool) -> None:
        """Record a completed chunk; `durable` when the export cannot flush (a completed write is all there is)."""
        with self._lock:
            self._finished[chunk.seq] = chunk.end_point
            advanced = False
            while self._next in self._finished:
                self.point = self._finished.pop(self._next)
                self._next += 1
                advanced = True
            if advanced:
                self._progress.bytes_done = self.point.done
                if durable:
                    self._progress.resume_token = self.point.encode()
