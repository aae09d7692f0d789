"""The appliance side's durable memory of the VMA stream (DESIGN.md §4): per-job sequences and unacked messages.

`Outbox` is plain data and logic (no I/O, no asyncio): it assigns per-job sequences that only grow, keeps every
message the OMA has not acked yet, and remembers which commands were already processed. `StateFile` writes its
snapshot atomically to a small JSON file so a restarted agent continues where it left off.

What is kept per job, and why it is bounded:

- the highest sequence used locally (`last_sequence`) and the highest the OMA acked (`acked`), kept for the
  `max_jobs` most recently used jobs (a job with unacked messages is never forgotten);
- every unacked `JobEvent` (events are never coalesced), at most `max_unacked_events` over all jobs — past that,
  `add_event` raises `OutboxFullError` rather than grow without bound or drop an event;
- only the latest unacked `ProgressReport` (reports are absolute, so an older one carries nothing a newer one does
  not).

Command results: unacked results (at most `max_results`, oldest dropped first) and an LRU of the `max_results`
most recently processed command ids with their results, so a re-delivered command is answered without running it
again.

Memory is therefore at most `max_unacked_events` events + one progress report per job with unacked messages +
2 * `max_results` command results + `max_jobs` small counters.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from vma.v1 import stream_pb2

JobMessage: TypeAlias = stream_pb2.ProgressReport | stream_pb2.JobEvent

STATE_VERSION = 1
DEFAULT_MAX_UNACKED_EVENTS = 10_000
DEFAULT_MAX_RESULTS = 1_024
DEFAULT_MAX_JOBS = 10_000


class OutboxFullError(RuntimeError):
    """Too many events are waiting for acks; the OMA has been unreachable for long. Retry after reconnecting."""


class SequenceError(ValueError):
    """A message carried a sequence that does not grow past what was already submitted for its job."""


@dataclass
class JobState:
    """What the appliance knows about one job's stream."""

    last_sequence: int = 0  # highest sequence handed out or submitted locally
    acked: int = 0  # highest sequence the OMA durably stored
    last_submitted: int = 0  # highest sequence put into the outbox (explicit sequences must exceed it)
    events: dict[int, stream_pb2.JobEvent] = field(default_factory=dict)  # sequence → event, ascending
    progress: stream_pb2.ProgressReport | None = None  # the latest unacked report

    def unacked(self) -> list[JobMessage]:
        """Unacked messages of the job in sequence order."""
        messages: list[JobMessage] = list(self.events.values())
        if self.progress is not None:
            messages.append(self.progress)
            messages.sort(key=lambda m: m.sequence)
        return messages

    @property
    def empty(self) -> bool:
        return not self.events and self.progress is None


@dataclass
class AckOutcome:
    """What an ack released: the number of messages dropped and the latest progress report covered by it."""

    dropped: int
    progress: stream_pb2.ProgressReport | None


class Outbox:
    """Per-job sequences, unacked job messages and command results, and the processed-command LRU."""

    def __init__(
        self,
        *,
        max_unacked_events: int = DEFAULT_MAX_UNACKED_EVENTS,
        max_results: int = DEFAULT_MAX_RESULTS,
        max_jobs: int = DEFAULT_MAX_JOBS,
    ) -> None:
        self.max_unacked_events = max_unacked_events
        self.max_results = max_results
        self.max_jobs = max_jobs
        self.jobs: OrderedDict[str, JobState] = OrderedDict()
        self.results: OrderedDict[str, stream_pb2.CommandResult] = OrderedDict()  # unacked, oldest first
        self.processed: OrderedDict[str, stream_pb2.CommandResult] = OrderedDict()  # LRU, oldest first
        self.last_command_id = ""
        self._event_count = 0
        self.generation = 0  # bumped on every change; StateFile writes when it moved

    # -- sequences --------------------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobState:
        state = self.jobs.get(job_id)
        if state is None:
            state = self.jobs[job_id] = JobState()
            self._forget_old_jobs()
        else:
            self.jobs.move_to_end(job_id)
        return state

    def _forget_old_jobs(self) -> None:
        if len(self.jobs) <= self.max_jobs:
            return
        for job_id in [j for j, s in self.jobs.items() if s.empty][: len(self.jobs) - self.max_jobs]:
            del self.jobs[job_id]

    def next_sequence(self, job_id: str) -> int:
        """Hands out the next sequence of a job: above every sequence used locally and every one the OMA applied."""
        state = self.job(job_id)
        state.last_sequence = max(state.last_sequence, state.acked) + 1
        self.generation += 1
        return state.last_sequence

    def observe_server_sequence(self, job_id: str, last_applied: int) -> int:
        """The OMA says it applied everything of the job up to `last_applied` (Welcome cursor, start command).

        Later sequences continue above it, and buffered messages at or below it are dropped. Returns how many.
        """
        return self.ack(job_id, last_applied).dropped

    # -- job messages -----------------------------------------------------------------------------------------

    def _submit_sequence(self, state: JobState, message: JobMessage, job_id: str) -> None:
        if message.sequence == 0:
            message.sequence = max(state.last_sequence, state.acked) + 1
        elif message.sequence <= state.last_submitted or message.sequence <= state.acked:
            raise SequenceError(
                f"job {job_id}: sequence {message.sequence} does not grow past {max(state.last_submitted, state.acked)}"
                " already submitted or acked; leave sequence 0 to have the client assign it"
            )
        state.last_sequence = max(state.last_sequence, message.sequence)
        state.last_submitted = message.sequence

    def add_progress(self, report: stream_pb2.ProgressReport) -> None:
        """Buffers a progress report (assigning its sequence if 0); an older unacked report of the job is dropped."""
        state = self.job(report.job_id)
        self._submit_sequence(state, report, report.job_id)
        state.progress = report
        self.generation += 1

    def add_event(self, event: stream_pb2.JobEvent) -> None:
        """Buffers an event (assigning its sequence if 0) until acked. Raises OutboxFullError past the bound."""
        if self._event_count >= self.max_unacked_events:
            raise OutboxFullError(
                f"{self._event_count} events are waiting for the OMA's acks (limit {self.max_unacked_events}); "
                "the OMA has been unreachable for long — retry after the stream reconnects"
            )
        state = self.job(event.job_id)
        self._submit_sequence(state, event, event.job_id)
        state.events[event.sequence] = event
        self._event_count += 1
        self.generation += 1

    def ack(self, job_id: str, sequence: int) -> AckOutcome:
        """Drops every message of the job at or below `sequence`; later sequences continue above it."""
        state = self.job(job_id)
        state.acked = max(state.acked, sequence)
        state.last_sequence = max(state.last_sequence, state.acked)
        dropped = 0
        for seq in [s for s in state.events if s <= sequence]:
            del state.events[seq]
            dropped += 1
        self._event_count -= dropped
        progress = None
        if state.progress is not None and state.progress.sequence <= sequence:
            progress = state.progress
            state.progress = None
            dropped += 1
        self.generation += 1
        return AckOutcome(dropped, progress)

    def drop(self, job_id: str, sequence: int = 0) -> int:
        """Drops one message of a job (or, with sequence 0, all of the job's messages) after the OMA rejected it."""
        state = self.jobs.get(job_id)
        if state is None:
            return 0
        dropped = 0
        if sequence == 0:
            dropped = len(state.events) + (state.progress is not None)
            self._event_count -= len(state.events)
            state.events.clear()
            state.progress = None
        else:
            if state.events.pop(sequence, None) is not None:
                self._event_count -= 1
                dropped += 1
            if state.progress is not None and state.progress.sequence == sequence:
                state.progress = None
                dropped += 1
        self.generation += 1
        return dropped

    def acked_sequence(self, job_id: str) -> int:
        state = self.jobs.get(job_id)
        return state.acked if state else 0

    def last_sequence(self, job_id: str) -> int:
        state = self.jobs.get(job_id)
        return max(state.last_sequence, state.acked) if state else 0

    def unacked_jobs(self) -> list[str]:
        return [job_id for job_id, state in self.jobs.items() if not state.empty]

    def unacked_count(self) -> int:
        """Unacked job messages and command results."""
        progress = sum(1 for s in self.jobs.values() if s.progress is not None)
        return self._event_count + progress + len(self.results)

    # -- command results --------------------------------------------------------------------------------------

    def processed_result(self, command_id: str) -> stream_pb2.CommandResult | None:
        """The cached result of a command already processed, or None when it is new."""
        result = self.processed.get(command_id)
        if result is not None:
            self.processed.move_to_end(command_id)
        return result

    def add_result(self, result: stream_pb2.CommandResult) -> None:
        """Records a processed command and buffers its result until the OMA acks it."""
        self.processed[result.command_id] = result
        self.processed.move_to_end(result.command_id)
        while len(self.processed) > self.max_results:
            self.processed.popitem(last=False)
        self.results[result.command_id] = result
        self.results.move_to_end(result.command_id)
        while len(self.results) > self.max_results:
            self.results.popitem(last=False)
        self.last_command_id = result.command_id
        self.generation += 1

    def requeue_result(self, command_id: str) -> stream_pb2.CommandResult | None:
        """Buffers a processed command's cached result again (the OMA re-delivered the command)."""
        result = self.processed_result(command_id)
        if result is not None:
            self.results[command_id] = result
            self.generation += 1
        return result

    def ack_result(self, command_id: str) -> bool:
        if self.results.pop(command_id, None) is None:
            return False
        self.generation += 1
        return True

    # -- persistence ------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable picture of everything that must survive an agent restart."""

        def enc(message: Any) -> str:
            return base64.b64encode(message.SerializeToString()).decode("ascii")

        return {
            "version": STATE_VERSION,
            "jobs": {
                job_id: {
                    "last_sequence": s.last_sequence,
                    "acked": s.acked,
                    "last_submitted": s.last_submitted,
                    "events": [enc(e) for e in s.events.values()],
                    "progress": enc(s.progress) if s.progress is not None else None,
                }
                for job_id, s in self.jobs.items()
            },
            "results": [enc(r) for r in self.results.values()],
            "processed": [enc(r) for r in self.processed.values()],
            "last_command_id": self.last_command_id,
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Loads a snapshot written by `snapshot()`."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"stream client state has version {data.get('version')!r}, expected {STATE_VERSION}")

        def dec(cls: Any, text: str) -> Any:
            message = cls()
            message.ParseFromString(base64.b64decode(text))
            return message

        self.jobs.clear()
        self._event_count = 0
        for job_id, raw in data.get("jobs", {}).items():
            state = JobState(
                last_sequence=int(raw.get("last_sequence", 0)),
                acked=int(raw.get("acked", 0)),
                last_submitted=int(raw.get("last_submitted", 0)),
            )
            for text in raw.get("events", []):
                event = dec(stream_pb2.JobEvent, text)
                state.events[event.sequence] = event
            if raw.get("progress"):
                state.progress = dec(stream_pb2.ProgressReport, raw["progress"])
            self._event_count += len(state.events)
            self.jobs[job_id] = state
        self.results = OrderedDict(
            (r.command_id, r) for r in (dec(stream_pb2.CommandResult, t) for t in data.get("results", []))
        )
        self.processed = OrderedDict(
            (r.command_id, r) for r in (dec(stream_pb2.CommandResult, t) for t in data.get("processed", []))
        )
        self.last_command_id = str(data.get("last_command_id", ""))
        self.generation += 1


class StateFile:
    """Atomic JSON persistence of an Outbox in `state_dir/stream-client.json` (write to a temp file, fsync, rename)."""

    FILENAME = "stream-client.json"

    def __init__(self, state_dir: Path, *, fsync: bool = True) -> None:
        self.path = Path(state_dir) / self.FILENAME
        self.fsync = fsync

    def load(self, outbox: Outbox) -> bool:
        """Restores the outbox from the file; False when there is no file yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False
        outbox.restore(json.loads(text))
        return True

    def write(self, snapshot: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stream-client.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(snapshot, fh, separators=(",", ":"))
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
