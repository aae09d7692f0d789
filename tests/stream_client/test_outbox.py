"""The outbox alone: sequences, coalescing, acks, bounds and the state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from vma.v1 import stream_pb2
from vma_client_stubs.outbox import Outbox, OutboxFullError, SequenceError, StateFile


def progress(job: str, done: int, seq: int = 0) -> stream_pb2.ProgressReport:
    return stream_pb2.ProgressReport(job_id=job, bytes_done=done, bytes_total=100, sequence=seq)


def event(job: str, seq: int = 0) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job, sequence=seq, started=stream_pb2.JobStarted(source_snapshot="snap"))


def test_sequences_grow_per_job_and_continue_above_server_cursor() -> None:
    box = Outbox()
    box.add_progress(p1 := progress("a", 1))
    box.add_event(e2 := event("a"))
    box.add_event(b1 := event("b"))
    assert (p1.sequence, e2.sequence, b1.sequence) == (1, 2, 1)
    assert box.next_sequence("a") == 3
    box.observe_server_sequence("a", 10)  # the OMA applied more than we remember (state lost)
    box.add_progress(p := progress("a", 5))
    assert p.sequence == 11
    box.observe_server_sequence("a", 4)  # an older cursor never moves sequences back
    assert box.next_sequence("a") == 12


def test_only_latest_progress_is_kept_but_every_event() -> None:
    box = Outbox()
    box.add_progress(progress("a", 1))
    box.add_event(event("a"))
    box.add_progress(progress("a", 2))
    box.add_event(event("a"))
    box.add_progress(progress("a", 3))
    kinds = [(type(m).__name__, m.sequence) for m in box.jobs["a"].unacked()]
    assert kinds == [("JobEvent", 2), ("JobEvent", 4), ("ProgressReport", 5)]
    assert box.unacked_count() == 3


def test_ack_drops_up_to_sequence_and_returns_acked_progress() -> None:
    box = Outbox()
    box.add_event(event("a"))
    box.add_progress(progress("a", 40))
    box.add_event(event("a"))
    outcome = box.ack("a", 2)
    assert outcome.dropped == 2
    assert outcome.progress is not None and outcome.progress.bytes_done == 40
    assert [m.sequence for m in box.jobs["a"].unacked()] == [3]
    assert box.acked_sequence("a") == 2
    assert box.ack("a", 1).dropped == 0 and box.acked_sequence("a") == 2


def test_explicit_sequences_must_grow() -> None:
    box = Outbox()
    box.add_event(event("a", seq=5))
    with pytest.raises(SequenceError):
        box.add_event(event("a", seq=5))
    box.ack("a", 9)
    with pytest.raises(SequenceError):
        box.add_progress(progress("a", 1, seq=7))
    box.add_progress(p := progress("a", 1))
    assert p.sequence == 10


def test_event_bound_raises_instead_of_dropping() -> None:
    box = Outbox(max_unacked_events=3)
    for _ in range(3):
        box.add_event(event("a"))
    with pytest.raises(OutboxFullError):
        box.add_event(event("a"))
    box.add_progress(progress("a", 1))  # progress is one per job, always accepted
    box.ack("a", 1)
    box.add_event(event("a"))
    assert box.unacked_count() == 4


def test_drop_after_rejection() -> None:
    box = Outbox()
    box.add_event(event("a"))
    box.add_progress(progress("a", 1))
    assert box.drop("a", 1) == 1
    assert [m.sequence for m in box.jobs["a"].unacked()] == [2]
    assert box.drop("a") == 1
    assert box.unacked_count() == 0 and box.drop("zzz") == 0


def test_processed_commands_are_an_lru_and_results_wait_for_acks() -> None:
    box = Outbox(max_results=2)
    for i in range(3):
        box.add_result(stream_pb2.CommandResult(command_id=f"c{i}", outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED))
    assert list(box.processed) == ["c1", "c2"] and list(box.results) == ["c1", "c2"]
    assert box.last_command_id == "c2"
    assert box.processed_result("c0") is None
    assert box.ack_result("c1") and not box.ack_result("c1")
    assert box.requeue_result("c1") is not None and "c1" in box.results


def test_jobs_without_unacked_messages_are_forgotten_past_max_jobs() -> None:
    box = Outbox(max_jobs=2)
    box.add_event(event("keep"))
    for job in ("x", "y", "z"):
        box.next_sequence(job)
    assert "keep" in box.jobs and len(box.jobs) <= 3
    assert "x" not in box.jobs


def test_state_file_round_trip(tmp_path: Path) -> None:
    box = Outbox()
    box.add_event(event("a"))
    box.add_progress(progress("a", 7))
    box.ack("b", 4)
    box.add_result(stream_pb2.CommandResult(command_id="c1", outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED))
    file = StateFile(tmp_path)
    file.write(box.snapshot())
    restored = Outbox()
    assert file.load(restored)
    assert restored.snapshot() == box.snapshot()
    assert restored.unacked_count() == 3
    assert restored.next_sequence("a") == 3 and restored.next_sequence("b") == 5
    assert restored.processed_result("c1") is not None
    assert not StateFile(tmp_path / "none").load(Outbox())
