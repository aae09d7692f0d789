"""Commands the replication workflow sends to an appliance, built in one place."""

from __future__ import annotations

from oma_server.protocol.commands import CancelJob, DiskTarget, StartReplication
from oma_server.replication.state_machine import JobState


def start_replication_command(job: JobState, vm_uuid: str, capacities: dict[str, int]) -> StartReplication:
    return StartReplication(
        job_id=job.id,
        vm_uuid=vm_uuid,
        last_applied_sequence=job.last_sequence,
        disks=tuple(
            DiskTarget(
                disk_id=d.disk_id,
                disk_key=d.disk_key,
                nbd_uri=d.nbd_uri,
                previous_change_id="" if d.mode == "full" else d.previous_change_id,
                capacity_bytes=capacities.get(d.disk_id, 0),
                resume_token=d.resume_token,
                target_is_new=d.target_is_new,
                repair_extents=d.repair_extents,
            )
            for d in job.disks
            if not d.completed
        ),
    )


def cancel_command(job_id: str) -> CancelJob:
    return CancelJob(job_id=job_id)
