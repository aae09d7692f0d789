"""Time zones of operators' specs (schedules' cron expressions, bandwidth windows): IANA names from the system's tz
database (zoneinfo); "" is UTC."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from oma_server.errors import InvalidArgument


def zone_of(name: str) -> ZoneInfo:
    return ZoneInfo(name or "UTC")


def check_zone(name: str, field: str) -> str:
    """`name` if this server knows it; INVALID_ARGUMENT (TIME_ZONE_UNKNOWN) naming `field` otherwise."""
    try:
        zone_of(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            f"{field} {name!r} is not a time zone this server knows: give an IANA name such as 'Europe/Berlin'",
            reason="TIME_ZONE_UNKNOWN",
            field=field,
        ) from None
    return name
