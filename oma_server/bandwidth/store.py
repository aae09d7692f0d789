"""Bandwidth limits as operators manage them: set (create or replace, by target), read, list, delete.

A spec is checked whole before anything is stored (the field of the first problem is named). One limit per
target: setting a target's limit again replaces it under the same id, and the same spec again changes nothing.
The governor is told through `on_change` after the commit, and sends the rates in force to the appliance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loguru import logger

from oma_server.bandwidth.windows import (
    Policy,
    Window,
    check_rate,
    check_window_count,
    next_change,
    parse_wall_time,
    rate_at,
)
from oma_server.change_hooks import ChangeHooks
from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import Appliance, BandwidthLimit, ReplicationJob
from oma_server.errors import FailedPrecondition, InvalidArgument, NotFound
from oma_server.pagination import fetch_page
from oma_server.replication.state_machine import FINAL
from oma_server.time_zones import check_zone

TARGET_APPLIANCE = "appliance"
TARGET_JOB = "replication_job"
TARGET_KINDS = (TARGET_APPLIANCE, TARGET_JOB)
FINAL_JOB_STATUSES = tuple(s.value for s in FINAL)


@dataclass(frozen=True)
class WindowSpec:
    days: tuple[int, ...]  # ISO weekdays, 1 = Monday; empty: every day
    start: str  # "HH:MM"
    end: str
    bytes_per_second: int


@dataclass(frozen=True)
class LimitSpec:
    target_kind: str  # TARGET_KINDS, or "" (not given)
    target_id: str
    bytes_per_second: int
    windows: tuple[WindowSpec, ...]
    time_zone: str


@dataclass(frozen=True)
class LimitView:
    """A stored limit and what it imposes now."""

    row: BandwidthLimit
    spec: LimitSpec
    current_bytes_per_second: int
    next_change_at: datetime | None


def limit_not_found(limit_id: str) -> NotFound:
    return NotFound(
        f"bandwidth limit {limit_id} does not exist; list them with ListBandwidthLimits",
        reason="BANDWIDTH_LIMIT_NOT_FOUND",
        bandwidth_limit_id=limit_id,
    )


def spec_of(row: BandwidthLimit) -> LimitSpec:
    windows = tuple(
        WindowSpec(tuple(w["days"]), w["start"], w["end"], int(w["bytes_per_second"])) for w in row.windows or []
    )
    return LimitSpec(row.target_kind, row.target_id, row.bytes_per_second, windows, row.time_zone)


def policy_of(spec: LimitSpec) -> Policy:
    """The spec as `windows` evaluates it (the spec was checked when it was stored)."""
    windows = tuple(
        Window(frozenset(w.days), parse_wall_time(w.start, "start"), parse_wall_time(w.end, "end"), w.bytes_per_second)
        for w in spec.windows
    )
    return Policy(spec.bytes_per_second, windows, spec.time_zone)


def view_of(row: BandwidthLimit, now: datetime) -> LimitView:
    spec = spec_of(row)
    policy = policy_of(spec)
    return LimitView(row, spec, rate_at(policy, now), next_change(policy, now))


def check_spec(spec: LimitSpec, prefix: str = "spec.") -> LimitSpec:
    """The spec, normalised (times as HH:MM, days sorted); INVALID_ARGUMENT naming the first bad field."""
    if spec.target_kind not in TARGET_KINDS:
        raise InvalidArgument(
            f"{prefix}target.kind is required: BANDWIDTH_TARGET_KIND_APPLIANCE or "
            "BANDWIDTH_TARGET_KIND_REPLICATION_JOB",
            reason="BANDWIDTH_TARGET_INVALID",
            field=f"{prefix}target.kind",
        )
    if not spec.target_id:
        raise InvalidArgument(f"{prefix}target.id is required", reason="FIELD_REQUIRED", field=f"{prefix}target.id")
    check_rate(spec.bytes_per_second, f"{prefix}bytes_per_second")
    check_window_count(len(spec.windows), f"{prefix}windows")
    windows = []
    for i, window in enumerate(spec.windows):
        at = f"{prefix}windows[{i}]"
        if any(not 1 <= day <= 7 for day in window.days):
            raise InvalidArgument(
                f"{at}.days holds a value that is no weekday", reason="BANDWIDTH_LIMIT_INVALID", field=f"{at}.days"
            )
        start = parse_wall_time(window.start, f"{at}.start")
        end = parse_wall_time(window.end, f"{at}.end")
        check_rate(window.bytes_per_second, f"{at}.bytes_per_second")
        days = tuple(sorted(set(window.days)))
        windows.append(WindowSpec(days, f"{start:%H:%M}", f"{end:%H:%M}", window.bytes_per_second))
    time_zone = check_zone(spec.time_zone.strip(), f"{prefix}time_zone")
    return LimitSpec(spec.target_kind, spec.target_id, spec.bytes_per_second, tuple(windows), time_zone)


def _check_target(spec: LimitSpec) -> None:
    """NOT_FOUND for a target that does not exist; FAILED_PRECONDITION for a job that ended (inside the write)."""
    if spec.target_kind == TARGET_APPLIANCE:
        if Appliance.get_or_none(Appliance.id == spec.target_id) is None:
            raise NotFound(
                f"appliance {spec.target_id} does not exist; list them with ListAppliances",
                reason="APPLIANCE_NOT_FOUND",
                appliance_id=spec.target_id,
            )
        return
    job = ReplicationJob.get_or_none(ReplicationJob.id == spec.target_id)
    if job is None:
        raise NotFound(
            f"replication job {spec.target_id} does not exist; list them with ListReplicationJobs",
            reason="REPLICATION_JOB_NOT_FOUND",
            job_id=spec.target_id,
        )
    if job.status in FINAL_JOB_STATUSES:
        raise FailedPrecondition(
            f"replication job {job.id} is {job.status}: a limit of a job ends with it; limit its appliance "
            f"({job.appliance_id}) instead",
            reason="JOB_FINISHED",
            job_id=job.id,
        )


def _windows_json(spec: LimitSpec) -> list[dict[str, Any]]:
    return [
        {"days": list(w.days), "start": w.start, "end": w.end, "bytes_per_second": w.bytes_per_second}
        for w in spec.windows
    ]


class BandwidthLimitStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        #: called after a committed change (the governor sends the new rates)
        self.on_change = ChangeHooks()

    async def set(self, spec: LimitSpec) -> LimitView:
        spec = check_spec(spec)
        now = self.clock.now()

        def upsert() -> tuple[BandwidthLimit, bool]:
            _check_target(spec)
            row = BandwidthLimit.get_or_none(
                (BandwidthLimit.target_kind == spec.target_kind) & (BandwidthLimit.target_id == spec.target_id)
            )
            if row is not None and spec_of(row) == spec:
                return row, False
            if row is None:
                row = BandwidthLimit(target_kind=spec.target_kind, target_id=spec.target_id, created_at=now)
                created = True
            else:
                created = False
            row.bytes_per_second = spec.bytes_per_second
            row.windows = _windows_json(spec)
            row.time_zone = spec.time_zone
            row.updated_at = now
            row.save(force_insert=created)
            return row, True

        row, changed = await self.db.tx(upsert)
        view = view_of(row, now)
        if changed:
            logger.bind(bandwidth_limit_id=row.id, **{f"{row.target_kind}_id": row.target_id}).info(
                "bandwidth limit of {kind} {target} set: {rate} now",
                kind=row.target_kind.replace("_", " "),
                target=row.target_id,
                rate=describe_rate(view.current_bytes_per_second),
            )
            self.on_change()
        return view

    async def get(self, limit_id: str) -> LimitView:
        row = await self.db.run(BandwidthLimit.get_or_none, BandwidthLimit.id == limit_id)
        if row is None:
            raise limit_not_found(limit_id)
        return view_of(row, self.clock.now())

    async def list_limits(self, page_size: int, page_token: str, target_id: str = "") -> tuple[list[LimitView], str]:
        def query() -> tuple[list[BandwidthLimit], str]:
            q = BandwidthLimit.select().order_by(BandwidthLimit.created_at, BandwidthLimit.id)
            if target_id:
                q = q.where(BandwidthLimit.target_id == target_id)
            return fetch_page(q, page_size, page_token)

        rows, token = await self.db.run(query)
        now = self.clock.now()
        return [view_of(r, now) for r in rows], token

    async def delete(self, limit_id: str) -> None:
        def remove() -> None:
            if BandwidthLimit.delete().where(BandwidthLimit.id == limit_id).execute() == 0:
                raise limit_not_found(limit_id)

        await self.db.tx(remove)
        logger.bind(bandwidth_limit_id=limit_id).info("bandwidth limit deleted")
        self.on_change()


def describe_rate(bytes_per_second: int) -> str:
    return f"{bytes_per_second / 2**20:g} MiB/s" if bytes_per_second else "unlimited"
