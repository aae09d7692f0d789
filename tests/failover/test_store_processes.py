"""Failover jobs written by several OMA processes on one database (issue #18): commits of one job from two processes
never lose each other's changes (the row is locked until the commit), and a process publishes to its watchers what
another committed (`take_foreign`), in order, once."""

from __future__ import annotations

import asyncio

from oma_server.clock import SystemClock
from oma_server.db.database import Database
from oma_server.db.models import Appliance, VmContext
from oma_server.failover.state_machine import FailoverKind, FailoverStatus
from oma_server.failover.store import FailoverJobStore
from oma_server.watch import WatchHub


async def a_vm(db: Database) -> str:
    def create() -> str:
        appliance = Appliance.create(name="vma-1", credential_hash="x")
        return str(VmContext.create(appliance=appliance, vcenter="vc", vm_uuid="u-1", name="web-01").id)

    return await db.tx(create)


def two_processes(db: Database) -> tuple[FailoverJobStore, FailoverJobStore]:
    """Two stores, each with its own watch hub and locks: two OMA processes on one database."""
    return (FailoverJobStore(db, SystemClock(), WatchHub()), FailoverJobStore(db, SystemClock(), WatchHub()))


async def test_commits_of_one_job_from_two_processes_lose_nothing(db: Database) -> None:
    here, there = two_processes(db)
    job = await here.create(await a_vm(db), FailoverKind.TEST)

    async def mark(store: FailoverJobStore, name: str) -> None:
        await store.commit(job.id, lambda state: state.params.__setitem__(name, True))

    # Each commit reads the row, adds its key and writes the row back: an unlocked read would let one process's
    # write carry the row as it was before the other's commit, and that key would be gone.
    await asyncio.gather(*(mark(here if n % 2 else there, f"k{n}") for n in range(40)))
    stored = await here.get(job.id)
    assert sorted(stored.params) == sorted(f"k{n}" for n in range(40))


async def test_another_processes_commits_reach_this_ones_watchers_in_order_once(db: Database) -> None:
    here, there = two_processes(db)
    seen = []
    with there.watch.subscribe(lambda c: c.job_kind == "failover") as watching_there:

        async def shown() -> None:  # a watcher reading as it goes (a subscription keeps only a job's latest)
            while (change := await watching_there.next(0.1)) is not None:
                seen.append(change)

        job = await here.create(await a_vm(db), FailoverKind.TEST)
        await there.take_foreign(job.id)  # what the announcement of the insert makes `there` do
        await shown()
        await here.commit(job.id, lambda s: setattr(s, "status", FailoverStatus.RUNNING))
        await there.take_foreign(job.id)
        await shown()
        await there.take_foreign(job.id)  # a second notification of the same commit: nothing new to show
        await shown()
        await here.commit(job.id, lambda s: setattr(s, "status", FailoverStatus.COMPLETED))
        await there.take_foreign(job.id)
        await shown()
    assert [c.state.status for c in seen] == [FailoverStatus.PENDING, FailoverStatus.RUNNING, FailoverStatus.COMPLETED]
    assert [c.revision for c in seen] == sorted(c.revision for c in seen) and seen[-1].final
