"""A schedule's slots and jitter (oma_server/schedules/timing.py): pure functions, checked at their edges."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from oma_server.errors import InvalidArgument
from oma_server.schedules.timing import Timing, check_timing, jitter_of, next_slot, run_time

T0 = datetime(2026, 3, 27, 12, 0, 0)


def interval(seconds: int, jitter: int = 0) -> Timing:
    return Timing(seconds, "", "", jitter, T0)


def cron(expr: str, zone: str = "", jitter: int = 0) -> Timing:
    return Timing(0, expr, zone, jitter, T0)


def test_interval_slots_count_from_the_anchor_and_lie_strictly_after() -> None:
    t = interval(900)
    assert next_slot(t, T0) == T0 + timedelta(seconds=900)
    assert next_slot(t, T0 + timedelta(seconds=899)) == T0 + timedelta(seconds=900)
    assert next_slot(t, T0 + timedelta(seconds=900)) == T0 + timedelta(seconds=1800)
    # ten hours later: the first slot after then, not the ones missed (a catch-up is one sync)
    assert next_slot(t, T0 + timedelta(hours=10, seconds=1)) == T0 + timedelta(hours=10, seconds=900)


def test_cron_in_a_time_zone_follows_its_wall_clock_across_dst() -> None:
    # Europe/Berlin moves from UTC+1 to UTC+2 on 2026-03-29: 09:00 local is 08:00 UTC, then 07:00 UTC
    t = cron("0 9 * * *", "Europe/Berlin")
    first = next_slot(t, T0)
    second = next_slot(t, first)
    third = next_slot(t, second)
    assert (first, second, third) == (
        datetime(2026, 3, 28, 8, 0),
        datetime(2026, 3, 29, 7, 0),
        datetime(2026, 3, 30, 7, 0),
    )


def test_a_cron_time_dst_skips_runs_after_it_and_one_it_repeats_runs_once() -> None:
    spring = cron("30 2 * * *", "Europe/Berlin")  # 02:30 does not exist on 2026-03-29
    assert next_slot(spring, datetime(2026, 3, 28, 12, 0)) == datetime(2026, 3, 29, 1, 0)  # 03:00 CEST
    autumn = cron("30 2 * * *", "Europe/Berlin")  # 02:30 comes twice on 2026-10-25
    first = next_slot(autumn, datetime(2026, 10, 24, 12, 0))
    assert first == datetime(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert next_slot(autumn, first) == datetime(2026, 10, 26, 1, 30)  # not 02:30 CET the same night


def test_cron_without_a_zone_is_utc() -> None:
    assert next_slot(cron("*/15 * * * *"), T0 + timedelta(minutes=1)) == T0 + timedelta(minutes=15)


def test_jitter_stays_within_its_bounds_is_fixed_per_slot_and_spreads() -> None:
    t = interval(3600, jitter=300)
    offsets = []
    slot = T0
    for _ in range(500):
        slot = next_slot(t, slot)
        run = run_time("sched-1", t, slot)
        assert slot <= run <= slot + timedelta(seconds=300)
        assert run == run_time("sched-1", t, slot)  # a restart computes the same run time
        offsets.append((run - slot).total_seconds())
    assert min(offsets) < 30 and max(offsets) > 270  # spread over the window, not bunched
    assert len({jitter_of(f"sched-{i}", T0, 300) for i in range(50)}) > 25  # schedules sharing a slot differ
    assert jitter_of("sched-1", T0, 0) == 0


@pytest.mark.parametrize(
    ("timing", "rpo", "field", "reason"),
    [
        (Timing(0, "", "", 0, T0), 3600, "spec.interval_seconds", "SCHEDULE_TIMING_INVALID"),
        (Timing(600, "0 * * * *", "", 0, T0), 3600, "spec.interval_seconds", "SCHEDULE_TIMING_INVALID"),
        (cron("61 * * * *"), 3600, "spec.cron", "CRON_INVALID"),
        (cron("0 * * * * *"), 3600, "spec.cron", "CRON_INVALID"),  # a seconds field: not five fields
        (cron("every hour"), 3600, "spec.cron", "CRON_INVALID"),
        (cron("@reboot"), 3600, "spec.cron", "CRON_INVALID"),
        (cron("0 0 31 2 *"), 3600, "spec.cron", "CRON_INVALID"),  # 31 February never comes
        (cron("0 * * * *", "Mars/Olympus"), 3600, "spec.time_zone", "TIME_ZONE_UNKNOWN"),
        (Timing(600, "", "Europe/Berlin", 0, T0), 3600, "spec.time_zone", "SCHEDULE_TIMING_INVALID"),
        (interval(30), 3600, "spec.interval_seconds", "SCHEDULE_TOO_FREQUENT"),
        (cron("* * * * *"), 3600, "spec.cron", "SCHEDULE_TOO_FREQUENT"),  # 60 s apart, the minimum here is 120
        (cron("0,1 9 * * *"), 3600, "spec.cron", "SCHEDULE_TOO_FREQUENT"),  # once a day, but two a minute apart
        (interval(600, jitter=600), 3600, "spec.jitter_seconds", "JITTER_TOO_LARGE"),
        (interval(600), 0, "spec.rpo_target_seconds", "RPO_TARGET_MISSING"),
    ],
)
def test_a_bad_spec_names_its_field(timing: Timing, rpo: int, field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_timing(timing, rpo, 120, T0, "spec.")
    assert error.value.reason == reason
    assert error.value.metadata["field"] == field


def test_good_specs_pass() -> None:
    check_timing(interval(120, jitter=119), 3600, 120, T0, "spec.")
    check_timing(cron("0 */4 * * 1-5", "America/New_York", jitter=600), 86400, 120, T0, "spec.")
    check_timing(cron("@hourly"), 7200, 120, T0, "spec.")
