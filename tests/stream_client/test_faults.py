"""Random faults between the client and a fake OMA: the OMA ends with exactly what a fault-free run gives it."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.stream_client.conftest import ClientFactory
from tests.stream_client.fake_gateway import FakeGateway
from vma.v1 import stream_pb2

JOBS = ("job-a", "job-b", "job-c")


@pytest.mark.parametrize("seed", range(12))
async def test_random_cuts_crashes_and_lost_acks_converge(
    make_client: ClientFactory, gateway: FakeGateway, seed: int
) -> None:
    rng = random.Random(seed)
    gateway.open_jobs = set(JOBS)
    client = make_client()
    await client.start(wait_connected=5)
    emitted: dict[str, list[tuple[int, str]]] = {job: [] for job in JOBS}  # job → [(sequence, marker)]
    last_report: dict[str, int] = {}
    for step in range(60):
        job = rng.choice(JOBS)
        roll = rng.random()
        if roll < 0.45:
            done = step * 100
            await client.report_progress(stream_pb2.ProgressReport(job_id=job, bytes_done=done, bytes_total=10**6))
            last_report[job] = done
        elif roll < 0.75:
            marker = f"{job}-{step}"
            seq = await client.emit_event(stream_pb2.JobEvent(job_id=job, failed=stream_pb2.JobFailed(detail=marker)))
            emitted[job].append((seq, marker))
        elif roll < 0.83:
            gateway.session.kill()  # a network cut: the OMA keeps what it applied
        elif roll < 0.90:
            gateway.crash()  # the OMA dies: what it never acked is gone
        else:
            gateway.auto_ack = not gateway.auto_ack  # acks lost for a while
        if rng.random() < 0.5:
            await asyncio.sleep(0)  # let the writer, the reader and the fake run between some operations
    gateway.auto_ack = True
    sessions = len(gateway.sessions)
    gateway.session.kill()  # a final reconnect makes the client resend whatever is still unacked
    await gateway.wait_for(lambda: len(gateway.sessions) > sessions)
    await client.wait_connected(5)
    await client.wait_acked(10)

    for job in JOBS:
        applied = [(e.sequence, e.failed.detail) for e in gateway.applied_events if e.job_id == job]
        assert applied == emitted[job], f"seed {seed}: events of {job} differ"  # all, once each, in order
        if job in last_report:
            assert gateway.applied_progress[job].bytes_done == last_report[job]
        assert client.acked_sequence(job) == gateway.applied.get(job, 0)
    assert client.unacked_count() == 0
