"""Commands the replication workflow sends to an appliance, built in one place."""

from __future__ import annotations

from oma_server.replication.state_machine import JobState
from vma.v1 import stream_pb2


def start_replication_command(job: JobState, vm_uuid: str, capacities: dict[str, int]) -> stream_pb2.Command:
    return stream_pb2.Command(
        start_replication=stream_pb2.StartReplicationCommand(
            job_id=job.id,
            vm_uuid=vm_uuid,
            last_applied_sequence=job.last_sequence,
            disks=[
                stream_pb2.DiskTarget(
                    disk_id=d.disk_id,
                    disk_key=d.disk_key,
                    nbd_uri=d.nbd_uri,
                    previous_change_id="" if d.mode == "full" else d.previous_change_id,
                    capacity_bytes=capacities.get(d.disk_id, 0),
                    resume_token=d.resume_token,
                    target_is_new=d.target_is_new,
                )
                for d in job.disks
                if not d.completed
            ],
        )
    )


def cancel_command(job_id: str) -> stream_pb2.Command:
    return stream_pb2.Command(cancel_job=stream_pb2.CancelJobCommand(job_id=job_id))
