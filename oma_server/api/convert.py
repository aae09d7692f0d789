"""Model ↔ message conversion, shared by every servicer."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from oma.common.v1 import inventory_pb2, jobs_pb2
from oma.v1 import (
    appliance_pb2,
    cloud_pb2,
    failover_pb2,
    job_pb2,
    replication_pb2,
    schedule_pb2,
    storage_pb2,
    vm_context_pb2,
)
from oma_server.cloud_inventory import TemplateView, ZoneView
from oma_server.cloudstack.models import DiskOffering, Network, ServiceOffering
from oma_server.db.integrity_models import BlockMap
from oma_server.db.models import Appliance, JobLog, NetworkMapping, Volume
from oma_server.failover.cutover import CutoverTiming
from oma_server.failover.state_machine import FailoverJobState
from oma_server.job_watch import Update
from oma_server.replication.state_machine import JobState
from oma_server.schedules.rpo import RpoView
from oma_server.storage.exports import ExportView
from oma_server.vm_contexts.service import VmView

_EPOCH = datetime(1970, 1, 1)


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A naive-UTC datetime as a Timestamp (None stays unset). Plain arithmetic: FromDatetime is slow and this runs
    for every watched change."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


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
        certificate_serial=row.certificate_serial,
        certificate_expires_at=ts(row.certificate_expires_at),
    )


def _duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=max(0.0, seconds)))
    return out


def _phase(name: str) -> int:
    return enum_value(jobs_pb2.CopyPhase, "COPY_PHASE", name)


def replication_job_to_proto(job: JobState) -> replication_pb2.ReplicationJob:
    error = None
    if job.error_reason or job.error_message:
        error = jobs_pb2.JobError(
            reason=job.error_reason,
            message=job.error_message,
            error_class=enum_value(jobs_pb2.ErrorClass, "ERROR_CLASS", job.error_class),  # type: ignore[arg-type]
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
                mode=enum_value(jobs_pb2.CopyMode, "COPY_MODE", d.mode),  # type: ignore[arg-type]
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


# Every watcher of a change gets the same message: convert each (revision, job) once, not once per watcher.
_UPDATE_CACHE: OrderedDict[tuple[str, int, str], job_pb2.JobUpdate] = OrderedDict()
_UPDATE_CACHE_SIZE = 4096


def job_update_to_proto(update: Update) -> job_pb2.JobUpdate:
    key = (update.kind, update.revision, update.change.job_id if update.change else "")
    cached = _UPDATE_CACHE.get(key)
    if cached is None:
        cached = _UPDATE_CACHE[key] = _job_update_to_proto(update)
        if len(_UPDATE_CACHE) > _UPDATE_CACHE_SIZE:
            _UPDATE_CACHE.popitem(last=False)
    return cached


def _job_update_to_proto(update: Update) -> job_pb2.JobUpdate:
    out = job_pb2.JobUpdate(
        kind=enum_value(job_pb2.UpdateKind, "UPDATE_KIND", update.kind),  # type: ignore[arg-type]
        revision=update.revision,
    )
    change = update.change
    if change is not None:
        if change.job_kind == "replication":
            out.replication_job.CopyFrom(replication_job_to_proto(change.state))
        elif change.job_kind == "rpo":
            out.vm_rpo.CopyFrom(rpo_to_proto(change.state))
        else:
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


def verification_to_proto(m: BlockMap | None) -> vm_context_pb2.DiskVerification | None:
    if m is None:
        return None
    return vm_context_pb2.DiskVerification(
        digest=m.digest,
        algorithm=m.algorithm,
        block_size=m.block_size,
        change_id=m.change_id,
        job_id=m.job_id,
        verified_at=ts(m.verified_at),
        blocks_read=m.blocks_read,
        block_count=-(-m.capacity_bytes // m.block_size),
        checked_at=ts(m.checked_at),
        check_job_id=m.check_job_id,
        check_outcome=m.check_outcome,
        check_digest=m.check_digest,
        mismatched=[vm_context_pb2.BlockRange(first=f, count=n) for f, n in m.check_mismatched or []],
        source_blocks_compared=m.source_compared,
    )


def vm_context_to_proto(view: VmView) -> vm_context_pb2.VmContext:
    vm = view.vm
    return vm_context_pb2.VmContext(
        id=vm.id,
        appliance_id=vm.appliance_id,
        vcenter=vm.vcenter,
        datacenter=vm.datacenter,
        vm_uuid=vm.vm_uuid,
        moref=vm.moref,
        name=vm.name,
        num_cpus=vm.num_cpus,
        memory_mib=vm.memory_mib,
        guest_os=vm.guest_os,
        firmware=enum_value(inventory_pb2.Firmware, "FIRMWARE", vm.firmware),  # type: ignore[arg-type]
        nics=[inventory_pb2.Nic(**nic) for nic in vm.nics or []],
        disks=[
            vm_context_pb2.Disk(
                id=d.disk.id,
                vm_context_id=vm.id,
                key=d.disk.key,
                label=d.disk.label,
                capacity_bytes=d.disk.capacity_bytes,
                datastore_path=d.disk.datastore_path,
                cbt_enabled=d.disk.cbt_enabled,
                unit_number=d.disk.unit_number,
                last_change_id=d.disk.last_change_id,
                change_id_history=[
                    vm_context_pb2.ChangeIdRecord(change_id=r.change_id, job_id=r.job_id, recorded_at=ts(r.recorded_at))
                    for r in d.change_ids
                ],
                volume_id=d.volume.id if d.volume else "",
                export_name=d.export_name,
                verification=verification_to_proto(d.verification),
            )
            for d in view.disks
        ],
        status=enum_value(vm_context_pb2.VmContextStatus, "VM_CONTEXT_STATUS", vm.status),  # type: ignore[arg-type]
        active_job_id=vm.active_job_id,
        last_completed_job_id=vm.last_completed_job_id,
        created_at=ts(vm.created_at),
        updated_at=ts(vm.updated_at),
    )


def volume_to_proto(row: Volume) -> storage_pb2.Volume:
    return storage_pb2.Volume(
        id=row.id,
        cloudstack_id=row.cloudstack_id,
        disk_id=row.disk_id,
        name=row.name,
        size_bytes=row.size_bytes,
        state=enum_value(storage_pb2.VolumeState, "VOLUME_STATE", row.state),  # type: ignore[arg-type]
        attached_vm_id=row.attached_vm_id,
        device_id=row.device_id or 0,
        device_path=row.device_path,
        created_at=ts(row.created_at),
        updated_at=ts(row.updated_at),
    )


def export_to_proto(view: ExportView) -> storage_pb2.NbdExport:
    row = view.row
    return storage_pb2.NbdExport(
        name=row.name,
        volume_id=row.volume_id,
        disk_id=view.disk_id,
        device_path=row.device_path,
        address=row.address,
        uri=view.uri,
        state=enum_value(storage_pb2.NbdExportState, "NBD_EXPORT_STATE", view.state),  # type: ignore[arg-type]
        created_at=ts(row.created_at),
    )


def failover_job_to_proto(job: FailoverJobState) -> failover_pb2.FailoverJob:
    error = None
    if job.error_reason or job.error_message:
        error = jobs_pb2.JobError(reason=job.error_reason, message=job.error_message)
    timing = CutoverTiming.of(job.params)
    return failover_pb2.FailoverJob(
        id=job.id,
        vm_context_id=job.vm_context_id,
        kind=enum_value(failover_pb2.FailoverJobKind, "FAILOVER_JOB_KIND", job.kind.value),  # type: ignore[arg-type]
        status=enum_value(  # type: ignore[arg-type]
            failover_pb2.FailoverJobStatus, "FAILOVER_JOB_STATUS", job.status.value
        ),
        steps=[
            failover_pb2.FailoverStep(
                name=s.name,
                status=enum_value(failover_pb2.StepStatus, "STEP_STATUS", s.status.value),  # type: ignore[arg-type]
                started_at=ts(s.started_at),
                finished_at=ts(s.finished_at),
                error=s.error,
                attempts=s.attempts,
                message=s.message,
            )
            for s in job.steps
        ],
        target_vm_id=job.target_vm_id,
        target_vm_name=job.target_vm_name,
        snapshot_ids=[job.snapshot_ids[k] for k in sorted(job.snapshot_ids)],
        error=error,
        revision=job.revision,
        created_at=ts(job.created_at),
        finished_at=ts(job.finished_at),
        current_step=job.current_step,
        outcome=job.outcome,
        cancel_requested=job.cancel_requested and not job.final,
        start_at=ts(timing.start_at),
        final_sync_deadline=ts(timing.final_sync_deadline),
        on_deadline_missed=enum_value(  # type: ignore[arg-type]
            failover_pb2.DeadlineMissedAction, "DEADLINE_MISSED_ACTION", timing.action.value
        )
        if timing.final_sync_deadline
        else 0,
        deadline_missed=bool(job.params.get("deadline_missed")),
    )


def job_to_proto(job: JobState | FailoverJobState) -> job_pb2.Job:
    """A job of any kind in the one Job message."""
    if isinstance(job, JobState):
        return job_pb2.Job(replication_job=replication_job_to_proto(job))
    return job_pb2.Job(failover_job=failover_job_to_proto(job))


def mapping_to_proto(row: NetworkMapping) -> failover_pb2.NetworkMapping:
    return failover_pb2.NetworkMapping(
        id=row.id,
        vm_context_id=row.vm_context_id,
        source_network=row.source_network,
        target_network_id=row.target_network_id,
        static_ip=row.static_ip,
        keep_mac=row.keep_mac,
        created_at=ts(row.created_at),
    )


# ---- CloudStack inventory ------------------------------------------------------------------------------------------
def zone_to_proto(view: ZoneView) -> cloud_pb2.CloudZone:
    z = view.zone
    return cloud_pb2.CloudZone(
        id=z.id,
        name=z.name,
        allocation_state=z.allocation_state or "",
        network_type=z.network_type or "",
        oma_zone=view.oma_zone,
    )


def network_to_proto(n: Network) -> cloud_pb2.CloudNetwork:
    return cloud_pb2.CloudNetwork(
        id=n.id,
        name=n.name,
        zone_id=n.zone_id or "",
        state=n.state or "",
        type=n.type or "",
        cidr=n.cidr or "",
        gateway=n.gateway or "",
    )


def service_offering_to_proto(o: ServiceOffering) -> cloud_pb2.CloudServiceOffering:
    return cloud_pb2.CloudServiceOffering(
        id=o.id,
        name=o.name,
        cpu_count=o.cpu_number or 0,
        cpu_speed_mhz=o.cpu_speed_mhz or 0,
        memory_mib=o.memory_mib or 0,
        customized=o.is_customized,
    )


def disk_offering_to_proto(o: DiskOffering) -> cloud_pb2.CloudDiskOffering:
    return cloud_pb2.CloudDiskOffering(
        id=o.id,
        name=o.name,
        disk_size_bytes=o.disk_size_bytes,
        customized=o.is_customized,
        storage_type=o.storage_type or "",
    )


def template_to_proto(view: TemplateView) -> cloud_pb2.CloudTemplate:
    t = view.template
    return cloud_pb2.CloudTemplate(
        id=t.id,
        name=t.name,
        zone_id=t.zone_id or "",
        ready=t.is_ready,
        size_bytes=t.size_bytes or 0,
        os_type=t.os_type or "",
        hypervisor=t.hypervisor or "",
        format=t.format or "",
        failover_default=view.failover_default,
    )


def rpo_to_proto(view: RpoView) -> schedule_pb2.VmRpo:
    point = view.recovery_point
    return schedule_pb2.VmRpo(
        vm_context_id=view.vm_context_id,
        status=enum_value(schedule_pb2.RpoStatus, "RPO_STATUS", view.status),  # type: ignore[arg-type]
        reason=view.reason,
        target_seconds=view.target_s,
        recovery_point=ts(point.at) if point else None,
        current_seconds=view.current_s,
        recovery_point_job_id=point.job_id if point else "",
        schedule_id=view.schedule_id,
        next_sync_at=ts(view.next_sync_at),
        schedule_paused=view.schedule_paused,
    )
