"""The copier's token buckets: debt-based pacing, live rate changes seen by waiting writers, and the agent's limit set
(newest command wins). A fake monotonic clock decides every wait; real time only bounds how long a test waits."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from vma.v1 import stream_pb2
from vma_client_stubs.agent.rate_limit import BandwidthLimits, TokenBucket

MIB = 2**20


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _acquire_in_thread(bucket: TokenBucket, n: int, cancel: threading.Event | None = None) -> threading.Thread:
    cancelled = cancel.is_set if cancel is not None else (lambda: False)
    thread = threading.Thread(target=bucket.acquire, args=(n,), kwargs={"cancelled": cancelled}, daemon=True)
    thread.start()
    return thread


def test_an_unlimited_bucket_never_waits() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(0, monotonic=clock)
    for _ in range(1000):
        bucket.acquire(32 * MIB)  # the clock never moves: any wait would hang here
    assert bucket.rate == 0


def test_a_write_passes_at_once_and_the_next_waits_until_the_debt_is_paid() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(10 * MIB, monotonic=clock)
    bucket.acquire(2 * MIB)  # not in debt: passes, 2 MiB owed (0.2 s at 10 MiB/s)
    waiting = _acquire_in_thread(bucket, 2 * MIB)
    clock.now = 0.1
    waiting.join(0.3)
    assert waiting.is_alive(), "1 MiB still owed: the second write must wait"
    clock.now = 0.2
    waiting.join(5)
    assert not waiting.is_alive()


def test_savings_are_capped_to_a_short_burst() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(10 * MIB, monotonic=clock)
    clock.now = 3600.0  # an hour idle saves at most BURST_S of the rate, not an hour of it
    bucket.acquire(4 * MIB)
    waiting = _acquire_in_thread(bucket, MIB)
    clock.now = 3600.3  # 4 MiB - 0.5 MiB burst = 3.5 MiB owed = 0.35 s
    waiting.join(0.3)
    assert waiting.is_alive()
    clock.now = 3600.36
    waiting.join(5)
    assert not waiting.is_alive()


def test_a_waiting_writer_goes_at_once_when_the_limit_is_lifted() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(MIB, monotonic=clock)
    bucket.acquire(64 * MIB)  # a minute of debt at 1 MiB/s
    waiting = _acquire_in_thread(bucket, MIB)
    waiting.join(0.2)
    assert waiting.is_alive()
    bucket.set_rate(0)
    waiting.join(5)
    assert not waiting.is_alive()


def test_a_higher_rate_shortens_the_wait_already_begun() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(MIB, monotonic=clock)
    bucket.acquire(10 * MIB)  # 10 s owed at 1 MiB/s
    waiting = _acquire_in_thread(bucket, MIB)
    clock.now = 1.0  # 9 MiB owed: at 100 MiB/s that is 0.09 s
    bucket.set_rate(100 * MIB)
    clock.now = 1.1
    waiting.join(5)
    assert not waiting.is_alive()


def test_a_cancelled_writer_stops_waiting() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(MIB, monotonic=clock)
    bucket.acquire(64 * MIB)
    cancel = threading.Event()
    waiting = _acquire_in_thread(bucket, MIB, cancel)
    cancel.set()
    waiting.join(5)
    assert not waiting.is_alive()


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        TokenBucket(-1)
    with pytest.raises(ValueError, match="negative"):
        TokenBucket().set_rate(-1)


def test_the_newest_command_wins_and_job_rates_reach_running_and_later_copies() -> None:
    limits = BandwidthLimits(local_ceiling=500 * MIB)
    t0 = datetime(2026, 12, 2, 12, 0)
    running = limits.buckets_for("job-1")
    assert [b.rate for b in running] == [500 * MIB, 0, 0]
    assert limits.apply(100 * MIB, {"job-1": 20 * MIB, "job-2": 30 * MIB}, t0)
    assert [b.rate for b in running] == [500 * MIB, 100 * MIB, 20 * MIB]
    assert limits.buckets_for("job-2")[2].rate == 30 * MIB  # a copy started after the command
    assert not limits.apply(0, {}, t0 - timedelta(seconds=1)), "a late resend of an older command is ignored"
    assert running[1].rate == 100 * MIB
    assert limits.apply(0, {}, t0 + timedelta(seconds=1))
    assert [b.rate for b in running] == [500 * MIB, 0, 0]
    assert limits.rates() == {"appliance": 0, "local": 500 * MIB}


async def test_the_agent_applies_a_set_bandwidth_limit_command() -> None:
    from loguru import logger

    from vma_client_stubs.agent.commands import AgentCommands

    limits = BandwidthLimits()
    commands = AgentCommands(
        None,  # type: ignore[arg-type]  # the handler touches neither vCenter nor messages
        None,  # type: ignore[arg-type]
        jobs={},
        records={},
        launch=lambda record: None,
        bandwidth=limits,
        log=logger,
    )
    command = stream_pb2.Command(
        command_id="c-1",
        set_bandwidth_limit=stream_pb2.SetBandwidthLimitCommand(
            appliance_bytes_per_second=50 * MIB, job_bytes_per_second={"job-9": 5 * MIB}
        ),
    )
    command.issued_at.FromDatetime(datetime(2026, 12, 2, 12, 0))
    result = await commands.set_bandwidth_limit(command)
    assert result.outcome == stream_pb2.COMMAND_OUTCOME_SUCCEEDED
    assert result.detail == "limits now appliance 50.0 MiB/s, local unlimited, job job-9 5.0 MiB/s"
    assert [b.rate for b in limits.buckets_for("job-9")] == [0, 50 * MIB, 5 * MIB]
    command.issued_at.FromDatetime(datetime(2026, 12, 2, 11, 0))
    command.set_bandwidth_limit.appliance_bytes_per_second = 0
    assert (await commands.set_bandwidth_limit(command)).detail == "ignored: a newer limit is in force"
    assert limits.appliance.rate == 50 * MIB
