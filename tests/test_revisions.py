"""Watch revisions only grow, across a crash too, and changes reach watchers in revision order (issue #10)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from oma_server.db.database import Database
from oma_server.revisions import RevisionReservations, _reserve_range
from oma_server.watch import Change, RevisionCompacted, WatchHub


def change(revision: int, job_id: str = "j") -> Change:
    return Change(revision, "replication", job_id, "vm", None, False)


async def test_after_a_crash_revisions_continue_above_everything_handed_out(db: Database) -> None:
    hub = WatchHub()
    await RevisionReservations(db, hub, range_size=1000).start(highest_stored=0)
    seen = [hub.next_revision() for _ in range(10)]  # published from memory, never written with a job
    for revision in seen:
        hub.publish(change(revision))
    # The process dies here. The next one starts from the same database, where no job row holds those revisions.
    reborn = WatchHub()
    await RevisionReservations(db, reborn, range_size=1000).start(highest_stored=0)
    assert reborn.next_revision() > max(seen)


async def test_changes_above_the_reserved_range_wait_for_its_extension(db: Database) -> None:
    hub = WatchHub()
    reservations = RevisionReservations(db, hub, range_size=4)
    await reservations.start(highest_stored=0)
    assert hub.bound == 4
    with hub.subscribe(lambda c: True) as subscription:
        for n in range(1, 7):
            hub.publish(change(hub.next_revision(), job_id=f"j{n}"))
        # Revisions past half the range asked for the next one; 5 and 6 are held until it is reserved.
        assert hub.published == 4
        await reservations.stop()
        assert hub.bound is not None and hub.bound >= 6 and hub.published == 6
        delivered = [(await subscription.next(1)) for _ in range(6)]
    assert [c.revision for c in delivered if c is not None] == [1, 2, 3, 4, 5, 6]


def test_a_change_behind_a_commit_in_flight_waits_and_order_holds() -> None:
    hub = WatchHub()
    with hub.subscribe(lambda c: True) as subscription:
        committing = hub.next_revision()  # a unit of work reserved 1 and is still in its transaction
        progress = hub.next_revision()
        hub.publish(change(progress, "b"))
        assert hub.published == 0  # 2 waits for 1
        hub.publish(change(committing, "a"))
        assert hub.published == 2
        failed = hub.next_revision()
        later = hub.next_revision()
        hub.publish(change(later, "c"))
        hub.abandon(failed)  # its commit failed: nothing to deliver, nothing to wait for
        assert hub.published == 4
        order = []
        while (c := asyncio.run(subscription.next(0))) is not None:
            order.append(c.revision)
    assert order == [1, 2, 4]
    with pytest.raises(ValueError):
        hub.publish(change(2))  # settled already


async def test_processes_sharing_a_database_never_hand_out_the_same_revision(db: Database) -> None:
    """Several OMA processes on one database: each range is above every earlier one of any process, and a hub whose
    next range does not follow its last skips the other's revisions — delivering in order through the gap."""
    first, second = WatchHub(), WatchHub()
    first_ranges = RevisionReservations(db, first, range_size=4)
    await first_ranges.start(highest_stored=0)  # (0, 4]
    await RevisionReservations(db, second, range_size=4).start(highest_stored=0)  # (4, 8]
    handed: list[int] = []
    with first.subscribe(lambda c: True) as subscription:
        for n in range(6):
            revision = first.next_revision()
            handed.append(revision)
            first.publish(change(revision, job_id=f"j{n}"))
            await first_ranges.stop()  # let the extension asked for at half the range commit: (8, 12]
        delivered = [c.revision for c in [await subscription.next(1) for _ in range(6)] if c is not None]
    seconds = [second.next_revision() for _ in range(4)]
    assert handed == [1, 2, 3, 4, 9, 10] and seconds == [5, 6, 7, 8]
    assert delivered == handed and first.published == 10


async def test_a_revision_another_process_handed_out_is_refused_not_misread(db: Database) -> None:
    """A watcher that moves to another OMA process with a revision of the first: the numbers of the two interleave by
    range, not by time, so the second answers REVISION_COMPACTED (list again, watch from 0) instead of replaying its
    own changes above that number and silently missing the ones below it."""
    first, second = WatchHub(), WatchHub()
    first_ranges = RevisionReservations(db, first, range_size=4)
    await first_ranges.start(highest_stored=0)  # (0, 4]
    await RevisionReservations(db, second, range_size=4).start(highest_stored=0)  # (4, 8]
    for n in range(3):
        first.publish(change(first.next_revision(), job_id=f"j{n}"))
    await first_ranges.stop()  # (8, 12] reserved at half the range: first continues at 9 after 4
    for n in range(3, 6):
        first.publish(change(first.next_revision(), job_id=f"j{n}"))
    second.publish(change(second.next_revision(), job_id="k"))
    assert first.published == 10 and second.published == 5
    everything = lambda c: True  # noqa: E731
    # Its own revisions resume, the boundaries of its ranges included ...
    assert [c.revision for c in first.since(2, everything)] == [3, 4, 9, 10]
    assert [c.revision for c in first.since(8, everything)] == [9, 10]
    # ... the second's do not: 5 (handed out by the second) is refused by the first, 9 (the first's) by the second.
    with pytest.raises(RevisionCompacted, match="another OMA process"):
        first.since(5, everything)
    with pytest.raises(RevisionCompacted, match="another OMA process"):
        second.since(9, everything)
    assert [c.revision for c in second.since(4, everything)] == [5]


async def test_concurrent_reservations_of_several_processes_never_overlap(db: Database) -> None:
    """Reservations committed at once from several database connections (the OMA's worker threads; on PostgreSQL,
    several OMA processes alike) get disjoint ranges: the record's row is locked from its read to the commit."""
    ranges = await asyncio.gather(*(db.tx(_reserve_range, 10, 0) for _ in range(24)))
    ordered = sorted(ranges)
    assert all(hi - lo == 10 for lo, hi in ordered)
    assert all(a_hi <= b_lo for (_, a_hi), (b_lo, _) in itertools.pairwise(ordered)), ordered
