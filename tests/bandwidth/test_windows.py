"""The rate of a bandwidth limit over time: weekly windows in a time zone, first match, overnight windows, DST,
the next change; and how a bad spec is refused (the field named)."""

from __future__ import annotations

from datetime import datetime, time

import pytest

from oma_server.bandwidth.store import LimitSpec, WindowSpec, check_spec
from oma_server.bandwidth.windows import MIN_RATE, Policy, Window, next_change, parse_wall_time, rate_at
from oma_server.errors import InvalidArgument

MIB = 2**20
WEEKDAYS = frozenset({1, 2, 3, 4, 5})
OFFICE = Window(WEEKDAYS, time(8), time(18), 100 * MIB)
BERLIN = Policy(0, (OFFICE,), "Europe/Berlin")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("at", "rate"),
    [
        ("2026-03-27 06:59", 0),  # Friday 07:59 in Berlin (UTC+1)
        ("2026-03-27 07:00", 100 * MIB),  # 08:00: the window starts
        ("2026-03-27 16:59", 100 * MIB),
        ("2026-03-27 17:00", 0),  # 18:00: it ends (the end is not in the window)
        ("2026-03-28 10:00", 0),  # Saturday
        ("2026-03-30 06:00", 100 * MIB),  # Monday 08:00 in summer time (UTC+2): wall clock, not UTC
    ],
)
def test_a_weekday_window_holds_on_the_wall_clock_of_its_zone(at: str, rate: int) -> None:
    assert rate_at(BERLIN, utc(at)) == rate


def test_an_overnight_window_belongs_to_the_day_it_starts() -> None:
    night = Policy(10 * MIB, (Window(frozenset({5}), time(22), time(6), 0),), "")  # Friday 22:00 to Saturday 06:00
    assert rate_at(night, utc("2026-03-27 21:59")) == 10 * MIB
    assert rate_at(night, utc("2026-03-27 22:00")) == 0
    assert rate_at(night, utc("2026-03-28 05:59")) == 0  # Saturday morning: still Friday's window
    assert rate_at(night, utc("2026-03-28 22:30")) == 10 * MIB  # Saturday night: no window starts on Saturday
    assert rate_at(night, utc("2026-03-26 23:00")) == 10 * MIB  # Thursday night


def test_the_first_window_that_holds_wins_and_a_same_start_and_end_is_a_whole_day() -> None:
    lunch = Window(frozenset(), time(12), time(13), 5 * MIB)
    whole_day = Window(frozenset({5}), time(0), time(0), 50 * MIB)
    policy = Policy(1 * MIB, (lunch, whole_day), "")
    assert rate_at(policy, utc("2026-03-27 12:30")) == 5 * MIB  # both hold: the first listed
    assert rate_at(policy, utc("2026-03-27 23:59")) == 50 * MIB
    assert rate_at(policy, utc("2026-03-28 00:00")) == 1 * MIB  # Saturday


def test_next_change_is_the_next_edge_that_changes_the_rate() -> None:
    assert next_change(BERLIN, utc("2026-03-27 12:00")) == utc("2026-03-27 17:00")  # 18:00 Berlin
    # Friday evening: the next change is Monday 08:00 Berlin, summer time by then
    assert next_change(BERLIN, utc("2026-03-27 17:00")) == utc("2026-03-30 06:00")
    assert next_change(Policy(5 * MIB, (), ""), utc("2026-03-27 12:00")) is None
    # back-to-back windows at one rate: their shared edge changes nothing
    split = Policy(0, (Window(frozenset(), time(8), time(12), MIB), Window(frozenset(), time(12), time(18), MIB)), "")
    assert next_change(split, utc("2026-03-27 09:00")) == utc("2026-03-27 18:00")
    # a window at the rate outside it never changes anything
    assert next_change(Policy(MIB, (Window(frozenset(), time(8), time(9), MIB),), ""), utc("2026-03-27 09:00")) is None


def spec(**overrides: object) -> LimitSpec:
    fields: dict[str, object] = {
        "target_kind": "appliance",
        "target_id": "vma-1",
        "bytes_per_second": 0,
        "windows": (WindowSpec((5, 1, 1), "8:00", "18:00", 100 * MIB),),
        "time_zone": "Europe/Berlin",
    }
    fields.update(overrides)
    return LimitSpec(**fields)  # type: ignore[arg-type]


def test_a_good_spec_is_normalised() -> None:
    checked = check_spec(spec())
    assert checked.windows == (WindowSpec((1, 5), "08:00", "18:00", 100 * MIB),)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"target_kind": ""}, "spec.target.kind", "BANDWIDTH_TARGET_KIND_APPLIANCE"),
        ({"target_id": ""}, "spec.target.id", "required"),
        ({"bytes_per_second": 1000}, "spec.bytes_per_second", "at least 65536"),
        ({"windows": (WindowSpec((), "25:00", "06:00", 0),)}, "spec.windows[0].start", "HH:MM"),
        ({"windows": (WindowSpec((), "08:00", "6pm", 0),)}, "spec.windows[0].end", "'6pm' is not a time of day"),
        ({"windows": (WindowSpec((8,), "08:00", "09:00", 0),)}, "spec.windows[0].days", "no weekday"),
        ({"windows": (WindowSpec((), "08:00", "09:00", 5),)}, "spec.windows[0].bytes_per_second", "64 KiB/s"),
        ({"windows": (WindowSpec((), "08:00", "09:00", 0),) * 33}, "spec.windows", "at most 32"),
        ({"time_zone": "Mars/Olympus"}, "spec.time_zone", "IANA name"),
    ],
)
def test_a_bad_spec_names_its_field(overrides: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_spec(spec(**overrides))
    assert err.value.metadata["field"] == field
    assert words in err.value.message


def test_wall_times_parse_strictly() -> None:
    assert parse_wall_time("07:05", "x") == time(7, 5)
    assert parse_wall_time("23:59", "x") == time(23, 59)
    for bad in ("24:00", "7:5", "0700", "07:60", "", "-1:00"):
        with pytest.raises(InvalidArgument):
            parse_wall_time(bad, "x")
    assert MIN_RATE == 65536
