"""What rate a bandwidth limit imposes at a time: its rate outside windows, or the first of its weekly windows that
holds the time. Pure functions of naive-UTC datetimes; the zones are the system's tz database (zoneinfo), the
weekly wall-clock arithmetic is the standard library's — no library of the field models "a rate per weekly window"
(croniter gives instants, not intervals), and these are a few lines.

A window is wall-clock time in the limit's zone: Mon-Fri 08:00-18:00 Europe/Berlin holds from 08:00 to 18:00 on
the clocks there, summer and winter. An end at or before the start ends on the next day (22:00-06:00, and
00:00-00:00 is a whole day); `days` are the days a window starts on (empty: every day).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from oma_server.errors import InvalidArgument
from oma_server.time_zones import zone_of

MAX_WINDOWS = 32
#: the lowest non-zero rate (64 KiB/s): below it one chunk of a copy would take minutes and a copy looks stuck
MIN_RATE = 64 * 1024
#: how far ahead `next_change` looks for an edge that changes the rate (every weekly pattern repeats within it)
LOOKAHEAD_DAYS = 8


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # ISO weekdays (1 = Monday ... 7 = Sunday) the window starts on; empty: every day
    start: time
    end: time
    bytes_per_second: int  # 0: unlimited

    def covers(self, wall: datetime) -> bool:
        """Whether the window holds at a wall-clock time of its zone (naive)."""
        return any(self._holds(wall, day) for day in (wall.date(), wall.date() - timedelta(days=1)))

    def _holds(self, wall: datetime, start_day: date) -> bool:
        if self.days and start_day.isoweekday() not in self.days:
            return False
        begins, ends = self.span(start_day)
        return begins <= wall < ends

    def span(self, start_day: date) -> tuple[datetime, datetime]:
        """The wall-clock interval of the window that starts on `start_day`."""
        begins = datetime.combine(start_day, self.start)
        ends = datetime.combine(start_day, self.end)
        if ends <= begins:
            ends += timedelta(days=1)
        return begins, ends


@dataclass(frozen=True)
class Policy:
    bytes_per_second: int  # outside every window; 0: unlimited
    windows: tuple[Window, ...]
    time_zone: str  # IANA name; "" is UTC


def _wall(policy: Policy, now: datetime) -> datetime:
    return now.replace(tzinfo=UTC).astimezone(zone_of(policy.time_zone)).replace(tzinfo=None)


def _utc(policy: Policy, wall: datetime) -> datetime:
    return wall.replace(tzinfo=zone_of(policy.time_zone)).astimezone(UTC).replace(tzinfo=None)


def rate_at(policy: Policy, now: datetime) -> int:
    """The rate in force at `now` (naive UTC): the first window that holds, else the rate outside windows."""
    wall = _wall(policy, now)
    for window in policy.windows:
        if window.covers(wall):
            return window.bytes_per_second
    return policy.bytes_per_second


def next_change(policy: Policy, now: datetime) -> datetime | None:
    """When the rate next changes after `now` (naive UTC), or None when it never does (no windows, or windows with
    the rate outside them). Windows edges where another window takes over at the same rate are not changes."""
    if not policy.windows:
        return None
    wall = _wall(policy, now)
    edges: set[datetime] = set()
    for offset in range(-1, LOOKAHEAD_DAYS):
        day = wall.date() + timedelta(days=offset)
        for window in policy.windows:
            if not window.days or day.isoweekday() in window.days:
                edges.update(e for e in window.span(day) if e > wall)
    current = rate_at(policy, now)
    for edge in sorted(edges):
        at = _utc(policy, edge)
        if at > now and rate_at(policy, at) != current:
            return at
    return None


# ---- checking a spec ---------------------------------------------------------------------------------------------
def _bad(field: str, message: str, reason: str = "BANDWIDTH_LIMIT_INVALID") -> InvalidArgument:
    return InvalidArgument(f"{field} {message}", reason=reason, field=field)


def parse_wall_time(text: str, field: str) -> time:
    """ "HH:MM" (24-hour) as a time; INVALID_ARGUMENT naming `field` otherwise."""
    hours, sep, minutes = text.strip().partition(":")
    well_formed = sep and len(minutes) == 2 and hours.isdigit() and minutes.isdigit() and len(hours) in (1, 2)
    if well_formed and int(hours) < 24 and int(minutes) < 60:
        return time(int(hours), int(minutes))
    raise _bad(field, f"{text!r} is not a time of day: give HH:MM, 24-hour, for example '08:00' or '18:30'")


def check_rate(value: int, field: str) -> int:
    if 0 < value < MIN_RATE:
        raise _bad(field, f"is {value} bytes/s; give 0 (unlimited) or at least {MIN_RATE} (64 KiB/s)")
    return value


def check_window_count(count: int, field: str) -> None:
    if count > MAX_WINDOWS:
        raise _bad(field, f"has {count} windows; at most {MAX_WINDOWS}")
