"""Model ↔ message conversion, shared by every servicer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from oma.v1 import appliance_pb2, job_pb2, replication_pb2
from oma_server.db.models import Appliance, JobLog
from oma_server.job_watch import Update
from oma_server.replication.state_machine import JobState
from vma.v1 import stream_pb2


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A naive-UTC datetime as a Timestamp (None stays unset)."""
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.replace(tzinfo=UTC) if value.tzinfo is None else value)
    return out


def enum_value(enum_type: object, prefix: str, name: str) -> int:
    """'replicating' → ENUM value for PREFIX_REPLICATING (0 when empty or unknown)."""
    if not name:
        return 0
    try:
        return int(enum_type.Value(f"{prefix}_{name.upper()}"))  # type: ignore[attr-defined]
    except ValueError:
        return 0


def enum_name(enum_type: object, prefix: str, value: int) -> str:
    """ENUM value → 'replicating' ('' for the UNSPECIFIED zero value)."""
    if not value:
        return ""
    return str(enum_type.Name(value)).removeprefix(f"{prefix}_").lower()  # type: ignore[attr-defined]


def appliance_to_proto(row: Appliance) -> appliance_pb2.Appliance:
    return appliance_pb2.Appliance(
        id=row.id,
        name=row.name,
        status=enum_value(appliance_pb2.ApplianceStatus, "APPLIANCE_STATUS", row.status),  # type: ignore[arg-type]
        connection_state=enum_value(  # type: ignore[arg-type]
            appliance_pb2.ConnectionState, "CONNECTION_STATE", row.connection_state
        ),
        agent_version=row.agent_version,
        capabilities=list(row.capabilities or []),
        last_seen_at=ts(row.last_seen_at),
        created_at=ts(row.created_at),
        connected_to=row.connected_to,
        session_id=row.session_id,
    )


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=max(0.0, seconds)))
    return out


def _phase(name: str) -> int:
    return enum_value(stream_pb2.CopyPhase, "COPY_PHASE", name)


def replication_job_to_proto(job: JobState) -> replication_pb2.ReplicationJob:
    error = None
    if job.error_reason or job.error_message:
        error = replication_pb2.JobError(
            reason=job.error_reason,
            message=job.error_message,
            error_class=enum_value(stream_pb2.ErrorClass, "ERROR_CLASS", job.error_class),  # type: ignore[arg-type]
        )
    return replication_pb2.ReplicationJob(
        id=job.id,
        vm_context_id=job.vm_context_id,
        appliance_id=job.appliance_id,
        kind=enum_value(replication_pb2.ReplicationJobKind, "REPLICATION_JOB_KIND", job.kind),  # type: ignore[arg-type]
        status=enum_value(  # type: ignore[arg-type]
            replication_pb2.ReplicationJobStatus, "REPLICATION_JOB_STATUS", job.status.value
        ),
        phase=_phase(job.phase),  # type: ignore[arg-type]
        current_operation=job.current_operation,
        bytes_done=job.bytes_done,
        bytes_total=job.bytes_total,
        percent=job.percent,
        throughput_bytes_per_second=job.throughput_bytes_per_second,
        eta=_duration(job.eta_seconds),
        disks=[
            replication_pb2.DiskReplicationProgress(
                disk_id=d.disk_id,
                disk_key=d.disk_key,
                bytes_done=d.bytes_done,
                bytes_total=d.bytes_total,
                throughput_bytes_per_second=d.throughput_bytes_per_second,
                phase=_phase(d.phase),  # type: ignore[arg-type]
                mode=enum_value(stream_pb2.CopyMode, "COPY_MODE", d.mode),  # type: ignore[arg-type]
                previous_change_id=d.previous_change_id,
                new_change_id=d.new_change_id,
                completed=d.completed,
                nbd_uri=d.nbd_uri,
                full_copy_reason=d.full_copy_reason,
            )
            for d in job.disks
        ],
        error=error,
        last_sequence=job.last_sequence,
        revision=job.revision,
        created_at=ts(job.created_at),
        started_at=ts(job.started_at),
        finished_at=ts(job.finished_at),
        updated_at=ts(job.updated_at),
        retry_of=job.retry_of,
    )


def job_update_to_proto(update: Update) -> job_pb2.JobUpdate:
    out = job_pb2.JobUpdate(
        kind=enum_value(job_pb2.UpdateKind, "UPDATE_KIND", update.kind),  # type: ignore[arg-type]
        revision=update.revision,
    )
    change = update.change
    if change is not None:
        if change.job_kind == "replication":
            out.replication_job.CopyFrom(replication_job_to_proto(change.state))
        else:
            from oma_server.api.failover import failover_job_to_proto

            out.failover_job.CopyFrom(failover_job_to_proto(change.state))
    return out


def job_log_entry_to_proto(entry: JobLog) -> job_pb2.JobLogEntry:
    return job_pb2.JobLogEntry(
        id=entry.id,
        job_id=entry.job_id,
        step=entry.step,
        status=enum_value(job_pb2.JobLogStatus, "JOB_LOG_STATUS", entry.status),  # type: ignore[arg-type]
        message=entry.message,
        started_at=ts(entry.started_at),
        finished_at=ts(entry.finished_at),
    )
