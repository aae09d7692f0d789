"""The scheduler: one loop per OMA that starts the syncs schedules call for, and tells watchers about RPOs.

Each pass (when the next schedule is due, when a change or a finished job wakes it, and at least every `tick_s`):
- a due schedule (not paused, `next_run_at` passed) whose VM still runs a job has its slot skipped: logged in that
  job's log and in loguru, the schedule's outcome says so;
- the other due schedules start their VM's sync through the replication service (the StartReplication path: an
  initial where the VM has none, else an incremental), the oldest recovery point first, as long as fewer than
  `max_total` jobs run in all and `max_per_appliance` on the VM's appliance; the rest keep their past `next_run_at`
  and wait for a later pass (their outcome says what they wait for);
- a schedule that acted moves to its first slot after now: after downtime, one sync per schedule, not one per
  missed slot. The start's request_id names the schedule and slot, so a crash between the start and that move
  finds the same job again instead of starting a second;
- every scheduled VM's RPO is assessed; one whose status, recovery point or next sync changed is published on the
  watch hub (job kind "rpo"), so WatchJobs shows it.

All times come from the clock adapter: a test's ManualClock drives the loop through hours of slots in moments. With
several OMA processes on one PostgreSQL, only the holder of the scheduler's advisory lock runs passes
(leadership.py); the others try again every `tick_s` and take over when it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import ReplicationJob, Schedule
from oma_server.errors import DomainError, Unavailable
from oma_server.joblog import JobLogService
from oma_server.pass_loop import PassLoop
from oma_server.replication.service import ReplicationService
from oma_server.replication.store import ReplicationJobStore
from oma_server.schedules import rpo
from oma_server.schedules.leadership import Leadership
from oma_server.schedules.store import TARGET_GROUP, target_vms, timing_of
from oma_server.schedules.timing import next_slot, run_time
from oma_server.watch import Change, Subscription

RPO_KIND = "rpo"


@dataclass(frozen=True)
class Limits:
    max_total: int  # running replication jobs in all (0: no limit)
    max_per_appliance: int  # ... on one appliance (0: no limit)


@dataclass(frozen=True)
class Due:
    """One VM a due schedule syncs (a group's schedule: one per member)."""

    schedule: Schedule
    slot: datetime  # the slot it is due for
    vm_id: str
    appliance_id: str
    recovery_point: datetime | None
    started_job_id: str = ""  # the job an earlier pass started for this slot (a group's slot waiting for others)


@dataclass(frozen=True)
class Acted:
    """What a pass did for one Due: `waiting` keeps the schedule's slot (a member waits for a free place)."""

    outcome: str
    job_id: str = ""
    waiting: bool = False


def slot_request_id(schedule_id: str, slot: datetime, vm_id: str, group: bool) -> str:
    """The request_id of a slot's start: a crash (or a group's wait) finds the same job again."""
    base = f"schedule-{schedule_id}-{int(slot.timestamp())}"
    return f"{base}-{vm_id}" if group else base


def rpo_job_id(vm_id: str) -> str:
    return f"rpo:{vm_id}"


class Scheduler:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        jobs: ReplicationJobStore,
        replication: ReplicationService,
        joblog: JobLogService,
        limits: Limits,
        tick_s: float = 30.0,
        leadership: Leadership | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.jobs = jobs
        self.replication = replication
        self.joblog = joblog
        self.limits = limits
        self.tick_s = tick_s
        #: several OMA processes on one PostgreSQL: only the leader starts syncs (None: this process always leads);
        #: every process tells its own watchers the RPOs (read from the database) each tick
        self.loop = PassLoop("scheduler", clock, self.run_pass, tick_s, leadership, follow_pass=self.follow_pass)
        self._watcher: asyncio.Task[None] | None = None
        self._published: dict[str, Change] = {}  # VM id → its last RPO change
        self._publishing = asyncio.Lock()
        self._settled: Callable[[str], Awaitable[None]] | None = None
        self._settling: set[asyncio.Task[None]] = set()

    # ---- life ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        finished = self.jobs.watch.subscribe(lambda c: c.job_kind == "replication" and c.final)
        self._watcher = asyncio.create_task(self._wake_on_finish(finished), name="scheduler-job-watch")
        self.loop.start()

    async def stop(self) -> None:
        for task in (self._watcher, *self._settling):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.loop.stop()

    def settle_through(self, settled: Callable[[str], Awaitable[None]]) -> None:
        """How to wait until a finished job's replicas were read back (the replication workflow's `settled`): its
        verification moves the recovery point, so the scheduler looks again then."""
        self._settled = settled

    def wake(self) -> None:
        """Look again now (a schedule changed, a job ended)."""
        self.loop.wake()

    async def _wake_on_finish(self, finished: Subscription) -> None:
        with finished:
            while True:
                change = await finished.next()
                self.wake()  # a place is free
                if change is not None and self._settled is not None:
                    task = asyncio.create_task(self._wake_when_settled(self._settled, change.job_id))
                    self._settling.add(task)
                    task.add_done_callback(self._settling.discard)

    async def _wake_when_settled(self, settled: Callable[[str], Awaitable[None]], job_id: str) -> None:
        try:
            await settled(job_id)
        finally:
            self.wake()  # verified (or not): the RPO may have moved

    async def pass_after_now(self) -> None:
        """Wait for a pass that began after this call (a test, after moving its clock)."""
        await self.loop.pass_after_now()

    # ---- one pass --------------------------------------------------------------------------------------------
    async def run_pass(self) -> float:
        """Act on every due schedule, publish changed RPOs; the seconds until the next schedule is due."""
        now = self.clock.now()
        due, upcoming = await self.db.run(self._read, now)
        open_jobs = self.jobs.open_jobs()
        by_vm = {j.vm_context_id: j for j in open_jobs}
        total = len(open_jobs)
        per_appliance = Counter(j.appliance_id for j in open_jobs)
        acted: dict[str, list[tuple[Due, Acted]]] = {}
        for item in sorted(due, key=_oldest_first):
            running = by_vm.get(item.vm_id)
            if item.started_job_id:
                result = Acted(f"started job {item.started_job_id}", item.started_job_id)
            elif running is not None:
                result = await self._skip(item, running.id, running.kind)
            elif waiting := self._full(total, per_appliance[item.appliance_id], item.appliance_id):
                result = Acted(waiting, waiting=True)
            else:
                result = await self._start(item)
                if result.job_id:
                    total += 1
                    per_appliance[item.appliance_id] += 1
            acted.setdefault(item.schedule.id, []).append((item, result))
        for results in acted.values():
            await self._conclude(results, now)
        await self._publish_rpos(now)
        if upcoming is None:
            return self.tick_s
        return max(0.0, min(self.tick_s, (upcoming - now).total_seconds()))

    async def _conclude(self, results: list[tuple[Due, Acted]], now: datetime) -> None:
        """A schedule's slot is done when none of its VMs waits for a place: then it moves to its next slot."""
        first = results[0][0]
        waiting = [r for _, r in results if r.waiting]
        if len(results) == 1:
            outcome, job_id = results[0][1].outcome, results[0][1].job_id
        else:
            started = [r.job_id for _, r in results if r.job_id]
            outcome = (
                f"group slot of {first.slot:%Y-%m-%d %H:%M:%S} UTC: {len(started)} of {len(results)} VMs started"
                + (f", {len(waiting)} waiting ({waiting[0].outcome})" if waiting else "")
                + "".join(f"; {d.vm_id}: {r.outcome}" for d, r in results if not r.job_id and not r.waiting)
            )
            job_id = started[-1] if started else ""
        if waiting:
            await self._set_outcome(first.schedule, outcome if len(results) > 1 else waiting[0].outcome)
            return
        await self._advance(first, now, outcome, job_id)

    def _read(self, now: datetime) -> tuple[list[Due], datetime | None]:
        """Due schedules' VMs with their appliance and recovery point; the next run time after now."""
        active = Schedule.select().where((Schedule.paused == False) & Schedule.next_run_at.is_null(False))  # noqa: E712
        due, later = [], []
        for row in active:
            run_at, slot = row.next_run_at, row.next_slot_at
            if run_at is None or slot is None:
                continue
            if run_at > now:
                later.append(run_at)
                continue
            group = row.target_kind == TARGET_GROUP
            for vm in target_vms(row):
                point = rpo.recovery_point(vm.id)
                started = ReplicationJob.get_or_none(
                    ReplicationJob.request_id == slot_request_id(row.id, slot, vm.id, group)
                )
                item = Due(
                    row, slot, vm.id, vm.appliance_id, point.at if point else None, started.id if started else ""
                )
                due.append(item)
        return due, min(later, default=None)

    def _full(self, total: int, on_appliance: int, appliance_id: str) -> str:
        limits = self.limits
        if limits.max_total and total >= limits.max_total:
            return f"waiting: {total} of {limits.max_total} replication jobs run (--max-running-jobs)"
        if limits.max_per_appliance and on_appliance >= limits.max_per_appliance:
            return (
                f"waiting: {on_appliance} of {limits.max_per_appliance} replication jobs run on appliance "
                f"{appliance_id} (--max-running-jobs-per-appliance)"
            )
        return ""

    async def _skip(self, item: Due, job_id: str, kind: str) -> Acted:
        outcome = f"skipped the slot of {item.slot:%Y-%m-%d %H:%M:%S} UTC: {kind} job {job_id} still runs"
        logger.bind(schedule_id=item.schedule.id, vm_context_id=item.vm_id, job_id=job_id).info(outcome)
        await self.joblog.note(job_id, "schedule", f"schedule {item.schedule.id} {outcome}", "skipped")
        return Acted(outcome)

    async def _start(self, item: Due) -> Acted:
        row, slot = item.schedule, item.slot
        log = logger.bind(schedule_id=row.id, vm_context_id=item.vm_id)
        request_id = slot_request_id(row.id, slot, item.vm_id, row.target_kind == TARGET_GROUP)
        try:
            job = await self.replication.start(item.vm_id, "", request_id)
        except Unavailable as exc:
            return Acted(f"waiting: {exc.message}", waiting=True)  # the OMA is starting: the next pass tries again
        except DomainError as exc:
            outcome = f"not started for the slot of {slot:%Y-%m-%d %H:%M:%S} UTC: {exc.message}"
            log.warning(outcome)
            return Acted(outcome)
        except Exception:
            log.opt(exception=True).error("scheduled start failed unexpectedly")
            return Acted("not started: an internal error (see the server log)")
        outcome = f"started {job.kind} job {job.id} for the slot of {slot:%Y-%m-%d %H:%M:%S} UTC"
        log.bind(job_id=job.id).info(outcome)
        await self.joblog.note(job.id, "schedule", f"started by schedule {row.id} for its slot {slot:%H:%M:%S} UTC")
        return Acted(outcome, job.id)

    async def _advance(self, item: Due, now: datetime, outcome: str, job_id: str) -> None:
        """The schedule to its first slot after now, if nobody changed it meanwhile (an update or pause wins)."""
        row = item.schedule
        timing = timing_of(row)
        slot = next_slot(timing, max(now, item.slot))
        fields = {
            Schedule.next_slot_at: slot,
            Schedule.next_run_at: run_time(row.id, timing, slot),
            Schedule.last_run_at: now,
            Schedule.last_outcome: outcome[:512],
        }
        if job_id:
            fields[Schedule.last_job_id] = job_id
        query = Schedule.update(fields).where(
            (Schedule.id == row.id) & (Schedule.paused == False) & (Schedule.next_slot_at == item.slot)  # noqa: E712
        )
        await self.db.tx(query.execute)

    async def _set_outcome(self, row: Schedule, outcome: str) -> None:
        if row.last_outcome != outcome:
            await self.db.tx(Schedule.update(last_outcome=outcome[:512]).where(Schedule.id == row.id).execute)

    # ---- RPOs to watchers ------------------------------------------------------------------------------------
    async def _publish_rpos(self, now: datetime) -> None:
        def read() -> dict[str, rpo.RpoView]:
            ids = sorted(set(rpo.scheduled_vms()) | set(self._published))
            return rpo.rpo_of(ids, now)

        async with self._publishing:
            for vm_id, view in (await self.db.run(read)).items():
                self._publish_rpo(vm_id, view)

    def _publish_rpo(self, vm_id: str, view: rpo.RpoView) -> None:
        last = self._published.get(vm_id)
        if last is not None and last.state.key == view.key:
            # nothing a watcher is told about; a snapshot shows the age as of now, at the revision of the last change
            self._published[vm_id] = dataclasses.replace(last, state=view)
            return
        if last is None and view.status == rpo.NO_TARGET:
            return
        change = Change(self.jobs.watch.next_revision(), RPO_KIND, rpo_job_id(vm_id), vm_id, view, False)
        self.jobs.watch.publish(change)
        if view.status == rpo.NO_TARGET:
            self._published.pop(vm_id, None)  # told once that its schedule is gone
        else:
            self._published[vm_id] = change
        if view.status == rpo.BREACHED and (last is None or last.state.status != rpo.BREACHED):
            logger.bind(vm_context_id=vm_id).warning("RPO breached: {reason}", reason=view.reason)

    async def follow_pass(self) -> None:
        """A process that does not lead the scheduler: the RPOs changed since its last look, to its own watchers."""
        await self._publish_rpos(self.clock.now())

    async def rpo_changes(self, include_finished: bool) -> list[Change]:
        """The RPO of every scheduled VM as of now (WatchJobs' initial snapshot): what changed since the last pass is
        published first, so the snapshot is current and the change reaches other watchers too."""
        await self._publish_rpos(self.clock.now())
        return list(self._published.values())


def _oldest_first(item: Due) -> tuple[int, datetime, datetime]:
    """Queue order: no recovery point first, then the oldest; ties by the slot."""
    if item.recovery_point is None:
        return (0, datetime.min, item.slot)
    return (1, item.recovery_point, item.slot)
