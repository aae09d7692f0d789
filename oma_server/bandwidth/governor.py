"""The bandwidth governor: sends every appliance connected to this process the copy-rate limits in force for it.

What an appliance is told is one whole `SetBandwidthLimit`: the rate of its own limit now and the rate now of
every limit of its open replication jobs (`windows.rate_at` with this process's clock). A pass computes that for
each connected appliance and queues a command through the durable outbox when it differs from what was sent last
on the appliance's session; older unanswered limit commands of the appliance are closed as superseded in the same
transaction, so a reconnect never resends a stale set (the appliance also ignores one issued before the newest it
applied). Passes run when a limit changes, when a session opens, when a replication job ends, at the next window
edge of any limit, and at least every `tick_s` — which is how a limit set through another OMA process reaches an
appliance whose stream this one holds. Limits of jobs that ended are deleted ("a job's limit ends with it").

At a new session (known by its id) the set is sent again when it limits anything or when the appliance was ever
sent one: an appliance that restarted forgot its limits, one that only reconnected takes the same set again. The
exception is a newest limit command still unanswered that holds the same set: the reconnect resends that one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from loguru import logger

from oma_server.bandwidth.store import (
    FINAL_JOB_STATUSES,
    TARGET_APPLIANCE,
    TARGET_JOB,
    describe_rate,
    policy_of,
    spec_of,
)
from oma_server.bandwidth.windows import next_change, rate_at
from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import BandwidthLimit, ReplicationJob, utcnow
from oma_server.db.models import Command as CommandRow
from oma_server.outbox import OPEN_STATUSES, CommandOutbox, insert_command
from oma_server.pass_loop import PassLoop
from oma_server.protocol.commands import QueuedCommand, SetBandwidthLimit
from oma_server.watch import WatchHub
from oma_server.wire.stream_codec import decode_stored_limits

KIND = "set_bandwidth_limit"  # SetBandwidthLimit.kind
UNLIMITED = SetBandwidthLimit(0, ())


class BandwidthGovernor:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        outbox: CommandOutbox,
        watch: WatchHub,
        connected: Callable[[], Mapping[str, str]],
        tick_s: float = 30.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.outbox = outbox
        self.watch = watch
        self.connected = connected  # appliance id → session id, of the streams this process holds
        self.loop = PassLoop("bandwidth-governor", clock, self.run_pass, tick_s)
        #: appliance id → (session id, the set that session was sent or needs not be sent)
        self._sent: dict[str, tuple[str, SetBandwidthLimit]] = {}

    # ---- life ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        # a job that ended: its limit ends, and the appliance forgets it
        self.loop.start(wake_on=self.watch.subscribe(lambda c: c.job_kind == "replication" and c.final))

    async def stop(self) -> None:
        await self.loop.stop()

    def wake(self) -> None:
        self.loop.wake()

    def session_opened(self, appliance_id: str) -> None:
        """A new session of the appliance: look at what it should be told (its agent may have restarted). A pass
        knows a session it has not seen by its id, so a pass that saw it before this call does not send twice."""
        self.wake()

    async def pass_after_now(self) -> None:
        await self.loop.pass_after_now()

    # ---- one pass --------------------------------------------------------------------------------------------
    async def run_pass(self) -> float:
        """Send changed sets to connected appliances; the seconds until a limit's rate next changes."""
        now = self.clock.now()
        wanted, upcoming = await self.db.tx(self._read, now)
        connected = dict(self.connected())
        self._sent = {a: sent for a, sent in self._sent.items() if connected.get(a) == sent[0]}
        for appliance_id, session_id in sorted(connected.items()):
            limits = wanted.get(appliance_id, UNLIMITED)
            sent = self._sent.get(appliance_id)
            if sent is None and await self.db.run(_needs_no_send, appliance_id, limits):
                self._sent[appliance_id] = (session_id, limits)
                continue
            if sent is not None and sent[1] == limits:
                continue
            await self._send(appliance_id, session_id, limits)
        if upcoming is None:
            return self.loop.tick_s
        return max(0.0, min(self.loop.tick_s, (upcoming - now).total_seconds()))

    def _read(self, now: datetime) -> tuple[dict[str, SetBandwidthLimit], datetime | None]:
        """The set in force now per appliance (those with a limit), the next rate change of any limit; limits of
        ended jobs are deleted on the way."""
        ended_jobs = ReplicationJob.select(ReplicationJob.id).where(ReplicationJob.status.in_(FINAL_JOB_STATUSES))
        BandwidthLimit.delete().where(
            (BandwidthLimit.target_kind == TARGET_JOB) & BandwidthLimit.target_id.in_(ended_jobs)
        ).execute()
        appliance_rates: dict[str, int] = {}
        job_rates: dict[str, dict[str, int]] = {}
        changes: list[datetime] = []
        rows = list(BandwidthLimit.select())
        job_ids = [r.target_id for r in rows if r.target_kind == TARGET_JOB]
        job_appliance: dict[str, str] = {
            job.id: job.appliance_id
            for job in ReplicationJob.select(ReplicationJob.id, ReplicationJob.appliance).where(
                ReplicationJob.id.in_(job_ids)
            )
        }
        for row in rows:
            policy = policy_of(spec_of(row))
            rate = rate_at(policy, now)
            change = next_change(policy, now)
            if change is not None:
                changes.append(change)
            if row.target_kind == TARGET_APPLIANCE:
                appliance_rates[row.target_id] = rate
            elif row.target_id in job_appliance and rate:
                job_rates.setdefault(job_appliance[row.target_id], {})[row.target_id] = rate
        wanted = {
            appliance_id: SetBandwidthLimit(
                appliance_rates.get(appliance_id, 0), tuple(sorted(job_rates.get(appliance_id, {}).items()))
            )
            for appliance_id in set(appliance_rates) | set(job_rates)
        }
        return wanted, min(changes, default=None)

    async def _send(self, appliance_id: str, session_id: str, limits: SetBandwidthLimit) -> None:
        def queue() -> QueuedCommand:
            queued = insert_command(appliance_id, limits)
            CommandRow.update(
                status="done",
                completed_at=utcnow(),
                result_outcome="superseded",
                result_detail=f"superseded by command {queued.command_id}",
            ).where(
                (CommandRow.appliance == appliance_id)
                & (CommandRow.kind == KIND)
                & CommandRow.status.in_(OPEN_STATUSES)
                & (CommandRow.id != queued.command_id)
            ).execute()
            return queued

        queued = await self.db.tx(queue)
        self._sent[appliance_id] = (session_id, limits)
        logger.bind(appliance_id=appliance_id, command_id=queued.command_id).info(
            "bandwidth limits sent: {what}", what=describe(limits)
        )
        await self.outbox.kick(appliance_id, [queued])


def _needs_no_send(appliance_id: str, limits: SetBandwidthLimit) -> bool:
    """Whether a session not seen yet needs no new command: the appliance never had a limit and needs none, or its
    newest limit command is unanswered and holds `limits` (the reconnect resends it)."""
    newest = (
        CommandRow.select(CommandRow.status, CommandRow.payload)
        .where((CommandRow.appliance == appliance_id) & (CommandRow.kind == KIND))
        .order_by(CommandRow.created_at.desc(), CommandRow.id.desc())
        .first()
    )
    if newest is None:
        return limits == UNLIMITED
    return newest.status in OPEN_STATUSES and decode_stored_limits(bytes(newest.payload)) == limits


def describe(limits: SetBandwidthLimit) -> str:
    jobs = ", ".join(f"job {job_id} {describe_rate(r)}" for job_id, r in limits.job_bytes_per_second)
    return f"appliance {describe_rate(limits.appliance_bytes_per_second)}" + (f"; {jobs}" if jobs else "")
