"""What an appliance's coming and going does to its jobs, for the session hub: an appliance silent past its deadline
has its copying jobs `stalled` (never failed); when it says hello again they continue — `replicating` if the copy
had started, else `waiting_for_vma`. Each move is a unit of work of the job store, under the job's lock, and skips
a job that changed meanwhile (completed, cancelled...)."""

from __future__ import annotations

from oma_server.replication.state_machine import JobState, JobStatus, transition
from oma_server.replication.store import ReplicationJobStore


async def stall_jobs_of(jobs: ReplicationJobStore, appliance_id: str) -> list[str]:
    return await _move_all(jobs, appliance_id, (JobStatus.REPLICATING, JobStatus.WAITING_FOR_VMA), stall=True)


async def resume_jobs_of(jobs: ReplicationJobStore, appliance_id: str) -> list[str]:
    return await _move_all(jobs, appliance_id, (JobStatus.STALLED,), stall=False)


async def _move_all(
    jobs: ReplicationJobStore, appliance_id: str, sources: tuple[JobStatus, ...], *, stall: bool
) -> list[str]:
    moved = []
    for job in jobs.open_jobs(appliance_id):
        async with jobs.job_lock(job.id):
            live = jobs.cached(job.id)
            if live is None or live.status not in sources:
                continue  # changed meanwhile: nothing to do
            if stall:
                dst = JobStatus.STALLED
            else:
                dst = JobStatus.REPLICATING if live.started_at is not None else JobStatus.WAITING_FOR_VMA

            def move(before: JobState, dst: JobStatus = dst) -> JobState:
                return transition(before, dst, jobs.clock.now())

            await jobs.change_locked(job.id, move)
            moved.append(job.id)
    return moved
