"""Fan-out of job changes to watchers, with revisions for resuming (etcd/Kubernetes watch semantics).

Every change of any job gets the next revision, and changes reach watchers **in revision order**, with no gaps: a
revision is reserved before the change is committed (it is written with it) and delivered when the commit is done;
a change whose revision follows one still committing is held until that one is delivered or abandoned (its commit
failed). So `published` — the revision up to which every change has been delivered — is a safe resume point and
the honest revision of a SYNCED marker: a watcher told SYNCED at N has been given every change up to N.

Watchers subscribe with a filter; each subscription keeps at most the latest pending change per job, so a slow
watcher coalesces progress it has not read yet instead of slowing the publisher or growing without bound (final
states are states too: the latest state always reaches it). A bounded history lets a watcher resume from a
revision; older than the history → `RevisionCompacted` and the client re-lists.

Revisions also only grow across restarts, though progress revisions live in memory until a batched write: they are
handed out from a durably reserved range (`revisions.RevisionReservations`), and a change above the reserved range
is held, like one behind a commit, until the range is extended. So a watcher resuming after an OMA crash never
finds its revision reused for a different change.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oma_server.errors import OutOfRange


@dataclass(frozen=True)
class Change:
    revision: int
    job_kind: str  # "replication" | "failover"
    job_id: str
    vm_context_id: str
    state: Any  # an immutable copy of the job's state (JobState / FailoverJobState)
    final: bool


class RevisionCompacted(OutOfRange):
    default_reason = "REVISION_COMPACTED"


class Subscription:
    def __init__(self, hub: WatchHub, accept: Callable[[Change], bool]) -> None:
        self._hub = hub
        self._accept = accept
        self._pending: OrderedDict[str, Change] = OrderedDict()
        self._wakeup = asyncio.Event()
        self.coalesced = 0

    def offer(self, change: Change) -> None:
        if not self._accept(change):
            return
        if self._pending.pop(change.job_id, None) is not None:
            self.coalesced += 1
        self._pending[change.job_id] = change
        self._wakeup.set()

    async def next(self, wait_s: float | None = None) -> Change | None:
        """The next change (oldest pending first); None when `wait_s` passes with nothing."""
        while not self._pending:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait_s)
            except TimeoutError:
                return None
        _, change = self._pending.popitem(last=False)
        return change

    def close(self) -> None:
        self._hub._subscriptions.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WatchHub:
    def __init__(self, start_revision: int = 0, history: int = 50_000) -> None:
        self.revision = start_revision  # the last reserved
        self.published = start_revision  # every revision up to here has been delivered (or abandoned)
        self._held: dict[int, Change | None] = {}  # arrived ahead of an earlier revision still committing
        self._history: deque[Change] = deque()
        self._history_max = history
        self._floor = start_revision  # every change above the floor is in the history
        self._subscriptions: set[Subscription] = set()
        # Changes above `bound` wait until it is raised (None: no bound, as in tests of the hub alone).
        self.bound: int | None = None
        self.headroom_low: Callable[[], None] | None = None  # called when the bound comes near
        self._low_mark: int | None = None
        #: (a, b): revisions a+1..b belong to another OMA process; after a this hub continues at b+1
        self._gap: tuple[int, int] | None = None
        #: [lo, hi] of every range this hub numbers (or reported) since its start: a revision between them is another
        #: OMA process's, and means nothing here (empty: no ranges, as in tests of the hub alone)
        self._ranges: list[list[int]] = []

    def reset(self, start_revision: int) -> None:
        """At start: revisions continue above `start_revision` (the highest one ever handed out, or above)."""
        if self.revision == self.published and not self._held:
            self.revision = self.published = max(self.revision, start_revision)
        self._floor = max(self._floor, start_revision)

    def raise_bound(self, bound: int, low_mark: int) -> None:
        """Revisions up to `bound` are durably reserved; `headroom_low` is called once the revision passes
        `low_mark`. Changes held above the old bound are delivered now."""
        if not self._ranges:
            self._ranges.append([self.published, bound])
        self._ranges[-1][1] = max(self._ranges[-1][1], bound)
        self.bound = bound
        self._low_mark = low_mark
        self._drain()

    def continue_at(self, lower: int, bound: int, low_mark: int) -> None:
        """The next reserved range is (lower, bound]: when it does not follow the current bound (another OMA process
        reserved the revisions in between), revisions continue above `lower` once the current range is used. (If
        this hub already handed out revisions past its bound — the reservation was that late — it cannot skip, and
        numbers on: as a single process always did.)"""
        if self.bound is not None and lower > self.bound and self.revision <= self.bound:
            self._gap = (self.bound, lower)
            self._ranges.append([lower, bound])  # `lower` itself is reported: published jumps to it past the gap
        self.raise_bound(bound, low_mark)

    def next_revision(self) -> int:
        """Reserve the next revision. The caller must `publish` a change with it or `abandon` it, whatever
        happens: until then every later change waits (see the module docstring)."""
        self.revision += 1
        if self._gap is not None and self.revision == self._gap[0] + 1:
            self.revision = self._gap[1] + 1
        if self._low_mark is not None and self.revision > self._low_mark and self.headroom_low is not None:
            self._low_mark = None  # once per range
            self.headroom_low()
        return self.revision

    def publish(self, change: Change) -> None:
        self._settle(change.revision, change)

    def abandon(self, revision: int) -> None:
        """A reserved revision whose change never happened (its commit failed): later changes need not wait."""
        self._settle(revision, None)

    def _settle(self, revision: int, change: Change | None) -> None:
        if revision <= self.published or revision > self.revision:
            raise ValueError(f"revision {revision} was not reserved or is settled already")
        self._held[revision] = change
        self._drain()

    def _drain(self) -> None:
        while True:
            gap = self._gap
            if gap is not None and self.published == gap[0] and self.revision > gap[1]:
                self.published, self._gap = gap[1], None  # nothing of ours in between: delivered through the gap
            nxt = self.published + 1
            if nxt not in self._held or (self.bound is not None and nxt > self.bound):
                return
            ready = self._held.pop(nxt)
            self.published = nxt
            if ready is not None:
                self._deliver(ready)

    def _deliver(self, change: Change) -> None:
        self._history.append(change)
        if len(self._history) > self._history_max:
            self._floor = self._history.popleft().revision
        for subscription in list(self._subscriptions):
            subscription.offer(change)

    def subscribe(self, accept: Callable[[Change], bool]) -> Subscription:
        subscription = Subscription(self, accept)
        self._subscriptions.add(subscription)
        return subscription

    def since(
        self, revision: int, accept: Callable[[Change], bool], *, latest_known: int | None = None
    ) -> list[Change]:
        """Changes after `revision` that pass `accept`. `latest_known` is the newest revision of what is watched
        (for one job: its revision); when it is not above `revision`, nothing was missed whatever the history.
        A revision inside this hub's span that another OMA process handed out (a watcher that moved here) is as good
        as compacted: this process's numbers around it say nothing of what the watcher saw."""
        if revision >= self._floor and self._ranges and not any(lo <= revision <= hi for lo, hi in self._ranges):
            raise RevisionCompacted(
                f"revision {revision} was handed out by another OMA process, not this one; revisions order changes "
                "within one process: list the jobs again and watch from revision 0",
                revision=revision,
                oldest=self._floor,
            )
        if revision < self._floor and (latest_known is None or latest_known > revision):
            raise RevisionCompacted(
                f"revision {revision} is no longer held (oldest resumable is {self._floor}); "
                "list the jobs again and watch from revision 0",
                revision=revision,
                oldest=self._floor,
            )
        return [c for c in self._history if c.revision > revision and accept(c)]

    @property
    def watchers(self) -> int:
        return len(self._subscriptions)
