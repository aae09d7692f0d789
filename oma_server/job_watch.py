"""Watch streams of jobs: current state first, then every change, resumable from a revision (no grpc here).

`watch_job` and `watch_jobs` yield `Update`s; the servicer only encodes them. When nothing changes for
`notify_interval_s`, a PROGRESS_NOTIFY update carries the current revision so a client's resume point stays fresh.

How a watch ends (job.proto states the same for clients):
- A watch of one job ends — the generator returns, the RPC ends OK — right after it has sent the job's final state,
  unless the caller asked to keep following. A watch that starts or resumes after the job ended sends that final
  state (SNAPSHOT) and ends, so a client's last update of a finished watch is always the job's final state.
- A watch of every job never ends on its own.
- A resume revision the history no longer holds raises RevisionCompacted; one beyond every revision this server has
  handed out raises RevisionAhead (a revision of another server or a typo: waiting would hang the watcher with no
  word). Both are OUT_OF_RANGE: the client re-reads the job(s) and watches from 0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from oma_server.errors import NotFound, OutOfRange
from oma_server.watch import Change, WatchHub

SNAPSHOT = "snapshot"
CHANGE = "change"
PROGRESS_NOTIFY = "progress_notify"
SYNCED = "synced"

# (job id) → the job's current Change-shaped view, or None if this kind of job has no such id.
Lookup = Callable[[str], Awaitable[Change | None]]
# () → current Change-shaped views of jobs (for WatchJobs' initial snapshot).
Lister = Callable[[bool], Awaitable[list[Change]]]


class RevisionAhead(OutOfRange):
    default_reason = "REVISION_AHEAD"


@dataclass(frozen=True)
class Update:
    kind: str
    revision: int
    change: Change | None  # None for PROGRESS_NOTIFY and SYNCED

    @property
    def state(self) -> Any:
        return self.change.state if self.change else None


class JobWatcher:
    def __init__(self, hub: WatchHub, *, notify_interval_s: float = 10.0) -> None:
        self.hub = hub
        self.notify_interval_s = notify_interval_s
        self.lookups: list[Lookup] = []
        self.listers: list[Lister] = []

    async def _current(self, job_id: str) -> Change:
        for lookup in self.lookups:
            found = await lookup(job_id)
            if found is not None:
                return found
        raise NotFound(
            f"job {job_id} does not exist (neither a replication nor a failover job)",
            reason="JOB_NOT_FOUND",
            job_id=job_id,
        )

    def _not_ahead(self, from_revision: int) -> None:
        """Revisions are reserved before they are used, so no change this server made has one above `revision`."""
        latest = self.hub.revision
        if from_revision > latest:
            raise RevisionAhead(
                f"revision {from_revision} is ahead of this server (its latest is {latest}): it is not a revision "
                "this server handed out; read the job(s) again and watch from revision 0",
                revision=from_revision,
                latest=latest,
            )

    async def watch_job(
        self, job_id: str, from_revision: int = 0, keep_following: bool = False
    ) -> AsyncIterator[Update]:
        def accept(change: Change) -> bool:
            return change.job_id == job_id

        # Subscribe before reading the current state: a change committed meanwhile is in the subscription.
        with self.hub.subscribe(accept) as subscription:
            current = await self._current(job_id)
            self._not_ahead(from_revision)
            sent: dict[str, int] = {}
            last: Change | None = None
            if from_revision == 0:
                yield Update(SNAPSHOT, current.revision, current)
                sent[job_id], last = current.revision, current
            else:
                for change in self.hub.since(from_revision, accept, latest_known=current.revision):
                    yield Update(CHANGE, change.revision, change)
                    sent[job_id], last = change.revision, change
                if current.final and (last is None or not last.final):
                    # The job ended before this watch (re)started, its final change not replayed (nothing newer than
                    # from_revision, or still on its way): its final state is what the client needs, once.
                    yield Update(SNAPSHOT, current.revision, current)
                    sent[job_id], last = current.revision, current
            if last is not None and last.final and not keep_following:
                return
            async for update in self._follow(subscription, sent, max(from_revision, sent.get(job_id, 0))):
                yield update
                if update.change is not None and update.change.final and not keep_following:
                    return

    async def watch_jobs(
        self, vm_context_id: str = "", from_revision: int = 0, include_finished: bool = False
    ) -> AsyncIterator[Update]:
        def accept(change: Change) -> bool:
            return not vm_context_id or change.vm_context_id == vm_context_id

        # Subscribe first, then note how far delivery has come: every change up to `synced` is reflected in the
        # snapshot read below, every later one comes through the subscription (once: `sent` drops what the snapshot
        # already showed). A job's snapshot may be newer than `synced` (its change is still on its way); SYNCED still
        # says only what is true — everything up to `synced` has been seen.
        with self.hub.subscribe(accept) as subscription:
            self._not_ahead(from_revision)
            sent: dict[str, int] = {}
            if from_revision == 0:
                synced = self.hub.published
                snapshot: list[Change] = []
                for lister in self.listers:
                    snapshot += [c for c in await lister(include_finished) if accept(c)]
                for change in sorted(snapshot, key=lambda c: c.revision):
                    yield Update(SNAPSHOT, change.revision, change)
                    sent[change.job_id] = change.revision
                yield Update(SYNCED, synced, None)
                last = synced
            else:
                last = from_revision
                for change in self.hub.since(from_revision, accept):
                    yield Update(CHANGE, change.revision, change)
                    sent[change.job_id] = change.revision
                    last = change.revision
            async for update in self._follow(subscription, sent, last):
                yield update

    async def _follow(self, subscription: Any, sent: dict[str, int], last: int) -> AsyncIterator[Update]:
        """Changes from the subscription, in revision order; one a job's snapshot or replay already showed is
        skipped. `last` is the resume point a PROGRESS_NOTIFY reports."""
        while True:
            change = await subscription.next(self.notify_interval_s)
            if change is None:
                last = max(last, self.hub.published)
                yield Update(PROGRESS_NOTIFY, last, None)
                continue
            last = max(last, change.revision)
            if change.revision <= sent.get(change.job_id, 0):
                continue  # already shown by the snapshot or the history replay
            sent[change.job_id] = change.revision
            yield Update(CHANGE, change.revision, change)
