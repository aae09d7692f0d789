"""When a schedule fires: its slots (an interval from an anchor, or a cron expression in a time zone) and each slot's
jitter. Pure functions of naive-UTC datetimes; the cron arithmetic is croniter's, the zones the system's tz database
(zoneinfo)."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from oma_server.errors import InvalidArgument
from oma_server.time_zones import check_zone, zone_of

#: gaps of a cron expression looked at when it is checked against the minimum interval
CRON_GAPS_CHECKED = 24


@dataclass(frozen=True)
class Timing:
    """What decides a schedule's slots. Exactly one of `interval_s` (> 0) and `cron` (non-empty) is set."""

    interval_s: int
    cron: str
    time_zone: str  # IANA name; "" is UTC
    jitter_s: int
    anchor: datetime  # naive UTC: interval slots are anchor + k * interval


def _to_utc(aware: datetime) -> datetime:
    return aware.astimezone(UTC).replace(tzinfo=None)


def _next_cron(expr: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first cron time strictly after `after` (naive UTC). A wall time that a DST change repeats (the hour that
    comes twice in autumn) is one slot, not two; one it skips (spring) runs at the first valid time after, as
    croniter gives it."""
    local_after = after.replace(tzinfo=UTC).astimezone(zone)
    found: datetime = croniter(expr, local_after).get_next(datetime)
    if found.replace(tzinfo=None) == local_after.replace(tzinfo=None) and found.utcoffset() != local_after.utcoffset():
        found = croniter(expr, found).get_next(datetime)
    return _to_utc(found)


def next_slot(timing: Timing, after: datetime) -> datetime:
    """The first slot strictly after `after` (naive UTC)."""
    if timing.cron:
        return _next_cron(timing.cron, zone_of(timing.time_zone), after)
    step = timedelta(seconds=timing.interval_s)
    if after < timing.anchor:
        return timing.anchor
    periods = (after - timing.anchor) // step + 1
    return timing.anchor + periods * step


def jitter_of(schedule_id: str, slot: datetime, jitter_s: int) -> int:
    """Seconds the sync of `slot` starts after it: 0..jitter_s, fixed per schedule and slot (a restart does not move
    a run), spread evenly over schedules that share a slot."""
    if jitter_s <= 0:
        return 0
    digest = hashlib.sha256(f"{schedule_id}|{slot.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (jitter_s + 1)


def run_time(schedule_id: str, timing: Timing, slot: datetime) -> datetime:
    return slot + timedelta(seconds=jitter_of(schedule_id, slot, timing.jitter_s))


def shortest_gap(timing: Timing, now: datetime) -> float:
    """The interval, or the shortest gap between a cron expression's next slots (CRON_GAPS_CHECKED of them)."""
    if not timing.cron:
        return float(timing.interval_s)
    slots = [next_slot(timing, now)]
    for _ in range(CRON_GAPS_CHECKED):
        slots.append(next_slot(timing, slots[-1]))
    return min((b - a).total_seconds() for a, b in itertools.pairwise(slots))


def _bad(field: str, message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"{field} {message}", reason=reason, field=field)


def check_timing(timing: Timing, rpo_target_s: int, min_interval_s: float, now: datetime, prefix: str = "") -> None:
    """INVALID_ARGUMENT naming the field (under `prefix`, e.g. "spec.") of the first thing wrong with a spec."""
    if bool(timing.interval_s) == bool(timing.cron):
        raise _bad(f"{prefix}interval_seconds", "or cron: give exactly one of them", "SCHEDULE_TIMING_INVALID")
    if timing.cron:
        fields = timing.cron.split()
        if not (timing.cron.startswith("@") or len(fields) == 5) or not croniter.is_valid(timing.cron):
            raise _bad(
                f"{prefix}cron",
                f"{timing.cron!r} is not a cron expression: give five fields (minute hour day-of-month month "
                "day-of-week), for example '0 */4 * * *'",
                "CRON_INVALID",
            )
    check_zone(timing.time_zone, f"{prefix}time_zone")
    if timing.time_zone and not timing.cron:
        raise _bad(f"{prefix}time_zone", "applies to a cron expression only; drop it", "SCHEDULE_TIMING_INVALID")
    try:
        gap = shortest_gap(timing, now)
    except CroniterBadDateError:
        raise _bad(
            f"{prefix}cron", f"{timing.cron!r} names no date that exists (it never fires)", "CRON_INVALID"
        ) from None
    if gap < min_interval_s:
        field = f"{prefix}cron" if timing.cron else f"{prefix}interval_seconds"
        raise _bad(
            field,
            f"gives syncs {gap:g} s apart; this server's minimum is {min_interval_s:g} s (--schedule-min-interval)",
            "SCHEDULE_TOO_FREQUENT",
        )
    if timing.jitter_s >= gap:
        raise _bad(
            f"{prefix}jitter_seconds",
            f"{timing.jitter_s} must be below the gap between syncs ({gap:g} s)",
            "JITTER_TOO_LARGE",
        )
    if rpo_target_s <= 0:
        raise _bad(
            f"{prefix}rpo_target_seconds",
            "is required: the age of the last verified sync a VM may reach (for example 2 intervals)",
            "RPO_TARGET_MISSING",
        )
