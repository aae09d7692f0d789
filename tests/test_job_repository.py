"""The JobRepository contract, one suite on three implementations: SQLite, PostgreSQL and memory (issue #12).

Then the live store and the applier on the memory repository: the stream's rules (sequence gating, validate then
apply, percent never backwards, acks only after a write, watch order) checked in milliseconds, without a server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest

from oma_server.clock import SystemClock
from oma_server.db.database import Database
from oma_server.db.migrations import apply_migrations
from oma_server.db.models import Appliance, Disk, VmContext
from oma_server.db.runner import InlineRunner, Runner
from oma_server.errors import AlreadyExists, InvalidArgument, MessageRejected
from oma_server.protocol.stream import DiskProgress, EventKind, JobEvent, ProgressReport
from oma_server.replication.applier import VmaMessageApplier
from oma_server.replication.repository import (
    JobChangedElsewhere,
    JobRepository,
    MemoryJobRepository,
    SqlJobRepository,
)
from oma_server.replication.state_machine import DiskState, JobState, JobStatus
from oma_server.replication.store import ReplicationJobStore
from oma_server.watch import WatchHub

T0 = datetime(2026, 12, 1, 8, 0, 0)


@dataclass
class Backend:
    repo: JobRepository
    runner: Runner
    vm_id: str
    appliance_id: str
    disk_ids: list[str]


async def sql_backend(url: str) -> Backend:
    db = Database(url)
    await db.run(apply_migrations, db.peewee)

    def parents() -> tuple[str, str, list[str]]:
        appliance = Appliance.create(name=f"vma-{uuid.uuid4().hex[:6]}", credential_hash="x")
        vm = VmContext.create(appliance=appliance.id, vcenter="vc", vm_uuid=str(uuid.uuid4()), name="vm")
        disks = [Disk.create(vm_context=vm.id, key=2000 + i, capacity_bytes=100, unit_number=i) for i in range(2)]
        return vm.id, appliance.id, [d.id for d in disks]

    vm_id, appliance_id, disk_ids = await db.tx(parents)
    return Backend(SqlJobRepository(), db, vm_id, appliance_id, disk_ids)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres), "memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield Backend(MemoryJobRepository(), InlineRunner(), "vm", "vma", ["d0", "d1"])
        return
    url = (
        f"sqlite:///{tmp_path / 'oma.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres").create_database()
    )
    found = await sql_backend(url)
    yield found
    assert isinstance(found.runner, Database)
    found.runner.close()


def new_job(b: Backend, *, minutes: int = 0, status: JobStatus = JobStatus.PENDING) -> JobState:
    at = T0 + timedelta(minutes=minutes)
    return JobState(
        id=str(uuid.uuid4()),
        vm_context_id=b.vm_id,
        appliance_id=b.appliance_id,
        kind="initial",
        status=status,
        current_operation="Queued",
        revision=minutes + 1,
        created_at=at,
        updated_at=at,
    )


def disks(b: Backend) -> list[DiskState]:
    return [DiskState(disk_id=d, disk_key=2000 + i, bytes_total=100, mode="full") for i, d in enumerate(b.disk_ids)]


async def test_insert_then_load_gives_the_job_back_with_its_disks(backend: Backend) -> None:
    job = new_job(backend)
    stored = await backend.runner.tx(backend.repo.insert, job, None, disks(backend))
    loaded = await backend.runner.run(backend.repo.load, job.id)
    assert loaded is not None and loaded == stored
    assert (loaded.status, loaded.revision, loaded.created_at) == (JobStatus.PENDING, 1, T0)
    assert [(d.disk_id, d.disk_key, d.bytes_total, d.mode) for d in loaded.disks] == [
        (backend.disk_ids[0], 2000, 100, "full"),
        (backend.disk_ids[1], 2001, 100, "full"),
    ]
    assert await backend.runner.run(backend.repo.load, "no-such-job") is None


async def test_a_request_id_is_taken_once(backend: Backend) -> None:
    await backend.runner.tx(backend.repo.insert, new_job(backend), "req-1", disks(backend))
    with pytest.raises(AlreadyExists) as err:
        await backend.runner.tx(backend.repo.insert, new_job(backend), "req-1", disks(backend))
    assert err.value.reason == "REQUEST_ID_REUSED"


async def test_writes_change_the_job_and_its_disks_and_nothing_else(backend: Backend) -> None:
    job = await backend.runner.tx(backend.repo.insert, new_job(backend), None, disks(backend))
    other = await backend.runner.tx(backend.repo.insert, new_job(backend, minutes=1), None, disks(backend))
    job.status, job.bytes_done, job.percent, job.last_sequence = JobStatus.REPLICATING, 50, 25.0, 7
    job.disks[1].bytes_done, job.disks[1].resume_token, job.disks[1].new_change_id = 50, "r-50", "cid"
    await backend.runner.tx(backend.repo.write_batch, [job])
    assert await backend.runner.run(backend.repo.load, job.id) == job
    assert await backend.runner.run(backend.repo.load, other.id) == other
    ghost = new_job(backend)
    await backend.runner.tx(backend.repo.write, ghost)  # never inserted: nothing appears
    assert await backend.runner.run(backend.repo.load, ghost.id) is None


async def test_a_write_from_a_stale_copy_is_refused_and_changes_nothing(backend: Backend) -> None:
    """Writes are fenced on the row's version: a copy loaded before another process's write cannot overwrite it."""
    job = await backend.runner.tx(backend.repo.insert, new_job(backend), None, disks(backend))
    here = await backend.runner.run(backend.repo.load, job.id)
    there = await backend.runner.run(backend.repo.load, job.id)
    assert here is not None and there is not None
    there.status, there.error_reason = JobStatus.CANCELLING, "cancelled elsewhere"
    await backend.runner.tx(backend.repo.write, there)
    here.status, here.bytes_done, here.disks[0].bytes_done = JobStatus.REPLICATING, 99, 99
    assert await backend.runner.tx(backend.repo.write_batch, [here]) == [job.id]
    with pytest.raises(JobChangedElsewhere):
        await backend.runner.tx(backend.repo.write, here)
    stored = await backend.runner.run(backend.repo.load, job.id)
    assert stored == there and stored.disks[0].bytes_done == 0
    stored.bytes_done = 5  # a copy loaded after the write writes
    assert await backend.runner.tx(backend.repo.write_batch, [stored]) == []
    assert (await backend.runner.run(backend.repo.load, job.id)).bytes_done == 5


async def test_of_copies_written_at_once_from_the_same_version_one_wins(backend: Backend) -> None:
    """The fence holds under concurrency (several OMA processes, or worker threads, at the same instant): the row is
    locked from the version check to the commit, so of copies loaded at one version exactly one is written."""
    job = await backend.runner.tx(backend.repo.insert, new_job(backend), None, disks(backend))
    copies = [await backend.runner.run(backend.repo.load, job.id) for _ in range(12)]

    async def write(n: int, copy: JobState | None) -> bool:
        assert copy is not None
        copy.current_operation = f"written by copy {n}"
        try:
            await backend.runner.tx(backend.repo.write, copy)
        except JobChangedElsewhere:
            return False
        return True

    won = await asyncio.gather(*(write(n, c) for n, c in enumerate(copies)))
    assert sum(won) == 1, won
    stored = await backend.runner.run(backend.repo.load, job.id)
    assert stored is not None and stored.current_operation == f"written by copy {won.index(True)}"


async def test_open_jobs_and_the_highest_revision(backend: Backend) -> None:
    ids = []
    for minutes, status in ((0, JobStatus.REPLICATING), (1, JobStatus.COMPLETED), (2, JobStatus.STALLED)):
        job = await backend.runner.tx(backend.repo.insert, new_job(backend, minutes=minutes), None, disks(backend))
        job.status = status
        await backend.runner.tx(backend.repo.write, job)
        ids.append(job.id)
    open_ids = {j.id for j in await backend.runner.run(backend.repo.load_open)}
    assert open_ids == {ids[0], ids[2]}
    assert await backend.runner.run(backend.repo.highest_revision) == 3


async def test_pages_are_newest_first_complete_and_filtered(backend: Backend) -> None:
    made = [
        await backend.runner.tx(backend.repo.insert, new_job(backend, minutes=m), None, disks(backend))
        for m in range(7)
    ]
    seen, token = [], ""
    while True:
        ids, token = await backend.runner.run(backend.repo.page, 3, token)
        seen += ids
        if not token:
            break
    assert seen == [j.id for j in reversed(made)]
    made[2].status = JobStatus.FAILED
    await backend.runner.tx(backend.repo.write, made[2])
    ids, token = await backend.runner.run(backend.repo.page, 10, "", backend.vm_id, "", ["failed"])
    assert (ids, token) == ([made[2].id], "")
    assert (await backend.runner.run(backend.repo.page, 10, "", "other-vm"))[0] == []
    with pytest.raises(InvalidArgument) as err:
        await backend.runner.run(backend.repo.page, 10, "not-a-token")
    assert err.value.reason == "PAGE_TOKEN_INVALID"


# ---- the store and the applier on memory ---------------------------------------------------------------------------
@pytest.fixture
async def memory_store() -> AsyncIterator[ReplicationJobStore]:
    store = ReplicationJobStore(InlineRunner(), SystemClock(), WatchHub(), repository=MemoryJobRepository())
    await store.start()
    yield store
    await store.stop()


async def handed_over(store: ReplicationJobStore) -> JobState:
    job = await store.create(
        vm_context_id="vm",
        appliance_id="vma",
        kind="initial",
        disks=[DiskState(disk_id=f"d{i}", disk_key=2000 + i, bytes_total=100, mode="full") for i in range(2)],
    )
    await store.transition(job.id, JobStatus.PROVISIONING)
    return await store.transition(job.id, JobStatus.WAITING_FOR_VMA)


def report(job_id: str, seq: int, done: int, total: int = 200, disk_total: int = 100) -> ProgressReport:
    return ProgressReport(
        job_id=job_id,
        sequence=seq,
        phase="copying",
        current_operation=f"at {done}",
        bytes_done=done,
        bytes_total=total,
        throughput_bytes_per_second=1,
        eta_seconds=None,
        disks=(DiskProgress("d0", min(done, disk_total), disk_total, 1, "copying", "full", ""),),
    )


async def test_reports_are_gated_by_sequence_and_acked_after_the_write(memory_store: ReplicationJobStore) -> None:
    acks: list[tuple[str, int]] = []
    memory_store.ack_through(lambda _appliance, job_id, seq: acks.append((job_id, seq)))
    applier = VmaMessageApplier(memory_store, SystemClock())
    job = await handed_over(memory_store)
    assert await applier.apply_progress("vma", report(job.id, 1, 100)) is None  # applied; ack after the flush
    assert acks == []
    assert await applier.apply_progress("vma", report(job.id, 1, 150)) == 0  # a duplicate: the durable sequence
    assert await memory_store.flush() == 1 and acks == [(job.id, 1)]
    await applier.apply_progress("vma", report(job.id, 2, 50))  # a resumed copy reports less: percent stays
    live = await memory_store.get(job.id)
    assert (live.status, live.last_sequence, live.bytes_done, live.percent) == (JobStatus.REPLICATING, 2, 50, 50.0)


async def test_a_refused_report_changes_nothing(memory_store: ReplicationJobStore) -> None:
    applier = VmaMessageApplier(memory_store, SystemClock())
    job = await handed_over(memory_store)
    await applier.apply_progress("vma", report(job.id, 1, 20))
    before = await memory_store.get(job.id)
    with pytest.raises(MessageRejected) as err:
        await applier.apply_progress("vma", report(job.id, 2, 2000, total=0))  # over the known total of 200
    assert err.value.code == "INVALID_MESSAGE"
    with pytest.raises(MessageRejected) as err:
        await applier.apply_progress("other-vma", report(job.id, 2, 30))
    assert err.value.code == "FOREIGN_JOB"
    assert await memory_store.get(job.id) == before


async def test_completion_is_one_change_watchers_see_in_order(memory_store: ReplicationJobStore) -> None:
    applier = VmaMessageApplier(memory_store, SystemClock())
    job = await handed_over(memory_store)
    seen: list[tuple[int, JobStatus]] = []

    def every_change(change: Any) -> bool:  # a subscription's filter sees every change, in publishing order
        seen.append((change.revision, change.state.status))
        return False

    with memory_store.watch.subscribe(every_change):
        for seq, (kind, disk) in enumerate([(EventKind.STARTED, ""), (EventKind.DISK_COMPLETED, "d0")], start=1):
            await applier.apply_event("vma", JobEvent(job.id, seq, kind, disk_id=disk, change_id="c0" if disk else ""))
        with pytest.raises(MessageRejected):  # d1 has no change id yet: a completion would fail the job...
            await applier.apply_event("vma", JobEvent(job.id, 3, EventKind.DISK_COMPLETED, disk_id="d9", change_id="x"))
        await applier.apply_event("vma", JobEvent(job.id, 3, EventKind.DISK_COMPLETED, disk_id="d1", change_id="c1"))
        await applier.apply_event("vma", JobEvent(job.id, 4, EventKind.COMPLETED))
    done = await memory_store.get(job.id)
    assert done.status == JobStatus.COMPLETED and done.percent == 100.0 and done.last_sequence == 4
    assert [r for r, _ in seen] == sorted(r for r, _ in seen)
    assert seen[-1][1] == JobStatus.COMPLETED and JobStatus.COMPLETING not in [s for _, s in seen]


async def test_change_ids_are_recorded_per_disk_in_order(backend: Backend) -> None:
    job = await backend.runner.tx(backend.repo.insert, new_job(backend), None, disks(backend))
    for change_id in ("cid-1", "cid-2"):
        await backend.runner.tx(backend.repo.record_change_id, job.id, backend.disk_ids[0], change_id)
    assert await backend.runner.run(backend.repo.change_ids, backend.disk_ids[0]) == [
        ("cid-1", job.id),
        ("cid-2", job.id),
    ]
    assert await backend.runner.run(backend.repo.change_ids, backend.disk_ids[1]) == []


async def test_a_job_changed_by_another_process_wins_over_this_ones_copy() -> None:
    """Two stores on one repository, as two OMA processes on one database: the one holding the stream has unwritten
    progress when the other cancels the job; its flush drops that progress (unacked), and its next event is
    applied to the stored state — the cancel is not overwritten, the event is not applied twice."""
    repo = MemoryJobRepository()
    here = ReplicationJobStore(InlineRunner(), SystemClock(), WatchHub(), repository=repo)
    there = ReplicationJobStore(InlineRunner(), SystemClock(), WatchHub(), repository=repo)
    acks: list[tuple[str, int]] = []
    here.ack_through(lambda _appliance, job_id, seq: acks.append((job_id, seq)))
    applier = VmaMessageApplier(here, SystemClock())
    job = await handed_over(here)
    await applier.apply_event("vma", JobEvent(job.id, 1, EventKind.STARTED))
    await applier.apply_progress("vma", report(job.id, 2, 60))
    await there.transition(job.id, JobStatus.CANCELLING, operation="cancel requested elsewhere")
    assert await here.flush() == 0 and acks == []
    assert (await here.get(job.id)).status == JobStatus.CANCELLING
    await applier.apply_event("vma", JobEvent(job.id, 3, EventKind.DISK_COMPLETED, disk_id="d0", change_id="c0"))
    # The stream moves to the other process, whose copy is older, and the appliance resends event 3: acked, once.
    moved = VmaMessageApplier(there, SystemClock())
    duplicate = JobEvent(job.id, 3, EventKind.DISK_COMPLETED, disk_id="d0", change_id="c0")
    assert await moved.apply_event("vma", duplicate) == 3
    await moved.apply_event("vma", JobEvent(job.id, 4, EventKind.CANCELLED))
    stored = repo.load(job.id)
    assert stored is not None
    assert (stored.status, stored.last_sequence, stored.disk("d0").new_change_id) == (  # type: ignore[union-attr]
        JobStatus.CANCELLED,
        4,
        "c0",
    )


class GatedRunner(InlineRunner):
    """Transactions wait for `gate` (a flush caught in its commit)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()  # a transaction waits at the gate

    async def tx(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.gate.is_set():
            self.waiting.set()
        await self.gate.wait()
        return fn(*args, **kwargs)


async def test_a_read_of_the_row_during_a_flush_never_replaces_the_newer_copy() -> None:
    """Several OMA processes on PostgreSQL: a job whose appliance is not connected here is read from its row
    (another process may have changed it) — but not while this process's flush of its progress is still being
    committed: that row is older than what watchers were already shown. (The stream fault harness on PostgreSQL saw
    it once: GetReplicationJob at revision 73 after a watcher had been shown 75.)"""
    runner = GatedRunner()
    store = ReplicationJobStore(runner, SystemClock(), WatchHub(), repository=MemoryJobRepository())
    store.is_local = lambda _appliance: False  # its stream is not (or no longer) here
    job = await handed_over(store)
    applier = VmaMessageApplier(store, SystemClock())
    await applier.apply_event("vma", JobEvent(job.id, 1, EventKind.STARTED))
    await applier.apply_progress("vma", report(job.id, 2, 60))
    shown = (await store.get(job.id)).revision
    runner.gate.clear()
    flushing = asyncio.create_task(store.flush())
    await runner.waiting.wait()  # the flush has taken the job and waits in its transaction
    seen = await store.get(job.id)  # the row still has the job as it was before the report
    assert (seen.revision, seen.bytes_done) == (shown, 60)
    runner.gate.set()
    assert await flushing == 1
    assert (await store.get(job.id)).bytes_done == 60


async def test_progress_relayed_from_another_process_is_taken_when_newer_and_published() -> None:
    """The progress relay between OMA processes (cluster/changes.py): the holder's in-memory progress, encoded as
    relayed, lands on the other process's copy and reaches its watchers; an older one never replaces a newer."""
    from oma_server.cluster.changes import _chunks, _progress_of, _state_of

    repo = MemoryJobRepository()
    here = ReplicationJobStore(InlineRunner(), SystemClock(), WatchHub(), repository=repo)
    there = ReplicationJobStore(InlineRunner(), SystemClock(), WatchHub(), repository=repo)
    there.is_local = lambda _appliance: False  # the stream is held by `here`
    applier = VmaMessageApplier(here, SystemClock())
    job = await handed_over(here)
    await applier.apply_event("vma", JobEvent(job.id, 1, EventKind.STARTED))
    await there.get(job.id)  # `there` has its copy (as its watchers' snapshot would)
    seen: list[tuple[int, int]] = []
    there.watch.subscribe(lambda c: seen.append((c.state.last_sequence, c.state.bytes_done)) or False)

    def relay() -> list[JobState]:
        state = here.cached(job.id)
        assert state is not None
        (payload,) = _chunks("p|", [_progress_of(state)])
        return [_state_of(item) for item in json.loads(payload.partition("|")[2])]

    await applier.apply_progress("vma", report(job.id, 2, 120))
    newer = relay()
    await applier.apply_progress("vma", report(job.id, 3, 150))
    newest = relay()
    assert there.take_progress(newest[0]) and not there.take_progress(newer[0])  # the older one comes late
    taken = there.cached(job.id)
    assert taken is not None and (taken.last_sequence, taken.bytes_done, taken.percent) == (3, 150, 75.0)
    assert taken.disk("d0").bytes_done == 100 and taken.status == JobStatus.REPLICATING  # type: ignore[union-attr]
    assert seen == [(3, 150)]
