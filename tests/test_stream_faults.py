"""Random stream cuts and OMA restarts against the real server: the final database equals the fault-free run.

The appliance side is scripted: a fixed list of reports and events for one job. At random points the stream is cut
right after a send (mid-report, or between an event and its ack) and, sometimes, the OMA is restarted; after each
reconnect the script resends exactly what the Welcome cursor shows missing, as a VMA must.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oma_server.app import App
from oma_server.db.models import ChangeIdRecord, Disk, ReplicationJob
from oma_server.replication.state_machine import JobState
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import make_settings
from tests.factories import RawStream, completed, disk_done, enroll, progress, seed_job, started


def script(job: JobState) -> list[tuple[str, object]]:
    total = sum(d.bytes_total for d in job.disks)
    messages: list[tuple[str, object]] = [("event", started(job, 1))]
    seq = 2
    for step in range(1, 9):
        messages.append(("progress", progress(job, seq, total * step // 8)))
        seq += 1
        if step == 4:
            messages.append(("event", disk_done(job, seq, 0, "cid-a")))
            seq += 1
    messages.append(("event", disk_done(job, seq, 1, "cid-b")))
    messages.append(("event", completed(job, seq + 1)))
    return messages


async def final_state(app: App, job_id: str) -> tuple[object, ...]:
    def read() -> tuple[object, ...]:
        job = ReplicationJob.get_by_id(job_id)
        records = sorted(r.change_id for r in ChangeIdRecord.select().where(ChangeIdRecord.job_id == job_id))
        disks = sorted(d.last_change_id for d in Disk.select().where(Disk.vm_context == job.vm_context_id))
        return (job.status, job.last_sequence, job.percent, job.bytes_done, tuple(records), tuple(disks))

    return await app.db.run(read)


async def run_with_faults(root: Path, database_url: str, cuts: set[int], restarts: set[int]) -> tuple[object, ...]:
    settings_ = make_settings(root, database_url)
    server = OmaServer(App(settings_))
    await server.start()
    try:
        async with oma_channel(server) as channel:
            enrolled = await enroll(channel)
            job = await seed_job(server.app, enrolled.appliance_id)
        messages = script(job)
        while True:  # until the Welcome shows nothing missing
            async with oma_channel(server) as channel:
                stream = RawStream(channel)
                welcome = await stream.hello(enrolled)
                cursor = {c.job_id: c.last_applied_sequence for c in welcome.open_jobs}.get(job.id, 10**9)
                pending = [m for m in messages if m[1].sequence > cursor]  # type: ignore[attr-defined]
                if not pending:
                    break
                cut_here = False
                for kind, message in pending:
                    await stream.send(**{kind: message})
                    position = messages.index((kind, message)) + 1
                    if position in cuts:
                        cuts.discard(position)
                        cut_here = True
                        break
                if not cut_here:
                    last = pending[-1][1].sequence  # type: ignore[attr-defined]
                    await stream.recv_until("ack", timeout=10, job_id=job.id, sequence=last)
                await stream.close()
            if cut_here and position in restarts:
                settings_.listen = "127.0.0.1:0"
                await server.stop(grace=0.2)
                server = OmaServer(App(settings_))
                await server.start()
        return await final_state(server.app, job.id)
    finally:
        await server.stop(grace=0.2)


FAULT_FREE = ("completed", 12, 100.0)  # 12 messages, sequences 1..12


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cuts=st.sets(st.integers(min_value=1, max_value=12), max_size=4),
    restart_at=st.sets(st.integers(min_value=1, max_value=12), max_size=2),
)
def test_random_cuts_and_restarts_converge_on_sqlite(cuts: set[int], restart_at: set[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        faulty = asyncio.run(run_with_faults(root / "f", "", set(cuts), restart_at & cuts))
        clean = asyncio.run(run_with_faults(root / "c", "", set(), set()))
    assert faulty[:3] == FAULT_FREE
    assert faulty[2:] == clean[2:]  # percent, bytes, change-id records exactly once, disks' last change ids
    assert clean[4] == ("cid-a", "cid-b")


def test_cuts_and_restarts_converge_on_postgresql(postgres, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cuts = {2, 5, 7, 11}
    faulty = asyncio.run(run_with_faults(tmp_path / "f", postgres.create_database(), cuts, {5, 11}))
    clean = asyncio.run(run_with_faults(tmp_path / "c", postgres.create_database(), set(), set()))
    assert faulty[:3] == FAULT_FREE
    assert faulty[2:] == clean[2:]
