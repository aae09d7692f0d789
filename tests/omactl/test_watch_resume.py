"""omactl watch across a dropped stream (resume from the last revision, OUT_OF_RANGE → from 0), and the bars."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import grpc
from rich.console import Console

from oma.common.v1 import jobs_pb2
from oma.v1 import job_pb2, job_pb2_grpc, replication_pb2
from oma_server.omactl.render import Output
from oma_server.omactl.watch import BarRenderer
from tests.omactl.conftest import run_omactl

MIB = 1 << 20


def job_update(revision: int, status: int, done: int, kind: int = job_pb2.UPDATE_KIND_CHANGE) -> job_pb2.JobUpdate:
    total = 4 * MIB
    job = replication_pb2.ReplicationJob(
        id="job-1",
        vm_context_id="vm-1",
        kind=replication_pb2.REPLICATION_JOB_KIND_INITIAL,
        status=status,  # type: ignore[arg-type]
        phase=jobs_pb2.COPY_PHASE_COPYING,
        current_operation=f"copying {done} of {total}",
        bytes_done=done,
        bytes_total=total,
        percent=100.0 * done / total,
        throughput_bytes_per_second=MIB,
        revision=revision,
        disks=[
            replication_pb2.DiskReplicationProgress(
                disk_id=f"disk-{i}",
                disk_key=2000 + i,
                bytes_done=done // 2,
                bytes_total=total // 2,
                throughput_bytes_per_second=MIB // 2,
            )
            for i in range(2)
        ],
    )
    return job_pb2.JobUpdate(kind=kind, revision=revision, replication_job=job)  # type: ignore[arg-type]


class FlakyJobService(job_pb2_grpc.JobServiceServicer):
    """First stream drops after two updates; the resume is refused as compacted; the restart from 0 completes."""

    def __init__(self) -> None:
        self.from_revisions: list[int] = []

    async def WatchJob(  # type: ignore[override]
        self, request: job_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[job_pb2.WatchJobResponse]:
        self.from_revisions.append(request.from_revision)
        attempt = len(self.from_revisions)
        replicating = replication_pb2.REPLICATION_JOB_STATUS_REPLICATING
        if attempt == 1:
            yield job_pb2.WatchJobResponse(update=job_update(5, replicating, MIB, job_pb2.UPDATE_KIND_SNAPSHOT))
            yield job_pb2.WatchJobResponse(update=job_update(6, replicating, 2 * MIB))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server going away")
        elif attempt == 2:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "revision 6 is no longer held; watch from revision 0")
        else:
            completed = replication_pb2.REPLICATION_JOB_STATUS_COMPLETED
            yield job_pb2.WatchJobResponse(update=job_update(9, completed, 4 * MIB, job_pb2.UPDATE_KIND_SNAPSHOT))
            await asyncio.sleep(30)  # the client leaves on its own once the job is final


async def test_watch_resumes_from_last_revision_then_starts_over_on_out_of_range() -> None:
    service = FlakyJobService()
    server = grpc.aio.server()
    job_pb2_grpc.add_JobServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        result = await run_omactl(f"127.0.0.1:{port}", "watch", "job-1")
    finally:
        await server.stop(grace=0)
    assert result.code == 0, result
    assert service.from_revisions == [0, 6, 0]
    lines = result.out.splitlines()
    assert any("50.0%" in line and "2.0 MiB/4.0 MiB" in line for line in lines), lines
    assert "completed" in lines[-1]
    assert "reconnecting from revision 6" in result.err and "starting over" in result.err
    assert "Traceback" not in result.err


def test_bars_show_one_job_and_one_bar_per_disk() -> None:
    out = Output(as_json=False, stream=io.StringIO())
    buffer = io.StringIO()
    out.console = Console(file=buffer, force_terminal=True, width=200)
    renderer = BarRenderer(out)
    renderer.show(job_update(3, replication_pb2.REPLICATION_JOB_STATUS_REPLICATING, 2 * MIB))
    renderer.show(job_update(4, replication_pb2.REPLICATION_JOB_STATUS_REPLICATING, 3 * MIB))
    assert list(renderer.tasks) == ["job-1", "job-1/disk-0", "job-1/disk-1"]
    job_task = renderer.progress.tasks[0]
    assert job_task.completed == 75.0 and job_task.fields["amount"] == "3.0 MiB/4.0 MiB"
    assert job_task.fields["rate"] == "1.0 MiB/s" and job_task.fields["state"] == "replicating"
    assert job_task.fields["operation"] == "copying: copying 3145728 of 4194304"
    disk_task = renderer.progress.tasks[1]
    assert disk_task.completed == 1.5 * MIB and disk_task.total == 2 * MIB and disk_task.fields["eta"] == "1s"
    with renderer:
        pass
    rendered = buffer.getvalue()
    assert "disk 2000" in rendered and "disk 2001" in rendered and "replicating" in rendered
