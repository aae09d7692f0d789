"""Peewee models of the domain (DESIGN.md §3). One model set serves SQLite and PostgreSQL.

Status columns hold the lower-case names of the state machines' states; only the state machines change them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import peewee as pw

database_proxy = pw.DatabaseProxy()


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


Q = TypeVar("Q", bound="pw.ModelSelect[Any]")


def on_postgresql() -> bool:
    """Whether the models are bound to PostgreSQL. (Through `database_proxy`: `isinstance(Model._meta.database,
    pw.PostgresqlDatabase)` is always False — it is the proxy — so ask what is behind it.)"""
    return isinstance(database_proxy.obj, pw.PostgresqlDatabase)


def for_update(query: Q) -> Q:
    """The query's rows locked until the commit (`SELECT ... FOR UPDATE`) on PostgreSQL, where several OMA processes
    write; SQLite has one writer at a time and no such clause."""
    return query.for_update() if on_postgresql() else query


class JsonField(pw.TextField):
    """JSON stored as text: portable across SQLite and PostgreSQL."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True)

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Appliance(BaseModel):
    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    name = pw.CharField(unique=True, max_length=63)
    credential_hash = pw.CharField(max_length=256)
    status = pw.CharField(max_length=16, default="active")
    connection_state = pw.CharField(max_length=24, default="never_connected")
    agent_version = pw.CharField(max_length=64, default="")
    capabilities = JsonField(default=list)
    last_seen_at = pw.DateTimeField(null=True)
    created_at = pw.DateTimeField(default=utcnow)
    connected_to = pw.CharField(max_length=64, default="")
    session_id = pw.CharField(max_length=64, default="")
    last_command_id = pw.CharField(max_length=64, default="")
    # The one-time join token of its enrollment (appliance_identity.py): its SHA-256, expiry and use.
    join_token_hash = pw.CharField(max_length=128, default="")
    join_token_expires_at = pw.DateTimeField(null=True)
    joined_at = pw.DateTimeField(null=True)
    # Its newest client certificate (shown by GetAppliance; the certificates themselves are ApplianceCertificate).
    certificate_serial = pw.CharField(max_length=64, default="")
    certificate_expires_at = pw.DateTimeField(null=True)


class ApplianceCertificate(BaseModel):
    """A client certificate the OMA's CA issued to an appliance: checked at every hello on the appliance port."""

    serial = pw.CharField(primary_key=True, max_length=64)  # hex
    appliance_id: str  # set by Peewee for the foreign key
    appliance = pw.ForeignKeyField(Appliance, backref="certificates", on_delete="CASCADE")
    public_key_sha256 = pw.CharField(max_length=64)  # of the SubjectPublicKeyInfo: a retry with the same key
    certificate_pem = pw.TextField()
    not_after = pw.DateTimeField()
    issued_at = pw.DateTimeField(default=utcnow)
    revoked_at = pw.DateTimeField(null=True)
    superseded_by = pw.CharField(max_length=64, default="")  # the serial whose use revoked this one (a renewal's)

    class Meta:
        table_name = "appliance_certificate"
        indexes = ((("appliance", "issued_at"), False),)


class VmContext(BaseModel):
    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    appliance_id: str  # set by Peewee for the foreign key
    appliance = pw.ForeignKeyField(Appliance, backref="vm_contexts", on_delete="RESTRICT")
    vcenter = pw.CharField(max_length=255)
    datacenter = pw.CharField(max_length=255, default="")
    vm_uuid = pw.CharField(max_length=64)
    moref = pw.CharField(max_length=64, default="")
    name = pw.CharField(max_length=255)
    num_cpus = pw.IntegerField(default=1)
    memory_mib = pw.BigIntegerField(default=1024)
    guest_os = pw.CharField(max_length=128, default="")
    firmware = pw.CharField(max_length=16, default="bios")
    nics = JsonField(default=list)
    status = pw.CharField(max_length=32, default="discovered")
    active_job_id = pw.CharField(max_length=64, default="")
    last_completed_job_id = pw.CharField(max_length=64, default="")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("vcenter", "vm_uuid"), True),)


class Disk(BaseModel):
    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    vm_context_id: str  # set by Peewee for the foreign key
    vm_context = pw.ForeignKeyField(VmContext, backref="disks", on_delete="CASCADE")
    key = pw.IntegerField()
    label = pw.CharField(max_length=255, default="")
    capacity_bytes = pw.BigIntegerField()
    datastore_path = pw.CharField(max_length=1024, default="")
    cbt_enabled = pw.BooleanField(default=True)
    unit_number = pw.IntegerField(default=0)
    last_change_id = pw.CharField(max_length=255, default="")
    # Capacity when last_change_id was recorded: a different capacity now means the disk was resized.
    replicated_capacity_bytes = pw.BigIntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("vm_context", "key"), True),)


class ChangeIdRecord(BaseModel):
    id = pw.AutoField()
    disk_id: str  # set by Peewee for the foreign key
    disk = pw.ForeignKeyField(Disk, backref="change_ids", on_delete="CASCADE")
    change_id = pw.CharField(max_length=255)
    job_id = pw.CharField(max_length=64)
    recorded_at = pw.DateTimeField(default=utcnow)


class Volume(BaseModel):
    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    disk_id: str  # set by Peewee for the foreign key
    disk = pw.ForeignKeyField(Disk, backref="volumes", on_delete="RESTRICT")
    cloudstack_id = pw.CharField(max_length=64, default="", index=True)
    name = pw.CharField(max_length=255)
    size_bytes = pw.BigIntegerField()
    state = pw.CharField(max_length=32, default="creating")
    attached_vm_id = pw.CharField(max_length=64, default="")
    device_id = pw.IntegerField(null=True)
    device_path = pw.CharField(max_length=1024, default="")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


class NbdExport(BaseModel):
    name = pw.CharField(primary_key=True, max_length=128)
    volume_id: str  # set by Peewee for the foreign key
    volume = pw.ForeignKeyField(Volume, backref="exports", on_delete="CASCADE")
    device_path = pw.CharField(max_length=1024)
    address = pw.CharField(max_length=255)
    state = pw.CharField(max_length=16, default="pending")
    created_at = pw.DateTimeField(default=utcnow)


class ReplicationJob(BaseModel):
    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    vm_context_id: str  # set by Peewee for the foreign key
    vm_context = pw.ForeignKeyField(VmContext, backref="replication_jobs", on_delete="CASCADE")
    appliance_id: str  # set by Peewee for the foreign key
    appliance = pw.ForeignKeyField(Appliance, backref="replication_jobs", on_delete="RESTRICT")
    kind = pw.CharField(max_length=16)
    status = pw.CharField(max_length=24, default="pending", index=True)
    phase = pw.CharField(max_length=24, default="")
    current_operation = pw.CharField(max_length=512, default="")
    bytes_done = pw.BigIntegerField(default=0)
    bytes_total = pw.BigIntegerField(default=0)
    percent = pw.FloatField(default=0.0)
    throughput_bytes_per_second = pw.BigIntegerField(default=0)
    eta_seconds = pw.FloatField(null=True)
    error_reason = pw.CharField(max_length=64, default="")
    error_message = pw.TextField(default="")
    error_class = pw.CharField(max_length=32, default="")
    last_sequence = pw.BigIntegerField(default=0)
    revision = pw.BigIntegerField(default=0)
    #: the row's optimistic-lock version: +1 at every write; a write from a stale copy of the job is refused
    write_version = pw.BigIntegerField(default=0)
    request_id = pw.CharField(max_length=128, null=True, unique=True)
    retry_of = pw.CharField(max_length=64, default="")
    created_at = pw.DateTimeField(default=utcnow)
    started_at = pw.DateTimeField(null=True)
    finished_at = pw.DateTimeField(null=True)
    updated_at = pw.DateTimeField(default=utcnow)


class JobDisk(BaseModel):
    """Per-disk progress of one replication job."""

    id = pw.AutoField()
    job_id: str  # set by Peewee for the foreign key
    job = pw.ForeignKeyField(ReplicationJob, backref="disks", on_delete="CASCADE")
    disk_id: str  # set by Peewee for the foreign key
    disk = pw.ForeignKeyField(Disk, backref="job_disks", on_delete="CASCADE")
    bytes_done = pw.BigIntegerField(default=0)
    bytes_total = pw.BigIntegerField(default=0)
    throughput_bytes_per_second = pw.BigIntegerField(default=0)
    phase = pw.CharField(max_length=24, default="")
    mode = pw.CharField(max_length=16, default="")
    previous_change_id = pw.CharField(max_length=255, default="")
    new_change_id = pw.CharField(max_length=255, default="")
    completed = pw.BooleanField(default=False)
    nbd_uri = pw.CharField(max_length=512, default="")
    full_copy_reason = pw.CharField(max_length=255, default="")
    resume_token = pw.CharField(max_length=1024, default="")
    repair_extents = JsonField(null=True)  # [[offset, length], ...] an incremental recopies too (a repair)

    class Meta:
        indexes = ((("job", "disk"), True),)


class FailoverJob(BaseModel):
    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    vm_context_id: str  # set by Peewee for the foreign key
    vm_context = pw.ForeignKeyField(VmContext, backref="failover_jobs", on_delete="CASCADE")
    kind = pw.CharField(max_length=16)
    status = pw.CharField(max_length=16, default="pending", index=True)
    steps = JsonField(default=list)
    current_step = pw.CharField(max_length=64, default="")
    target_vm_id = pw.CharField(max_length=64, default="")
    target_vm_name = pw.CharField(max_length=255, default="")
    snapshot_ids = JsonField(default=dict)
    params = JsonField(default=dict)
    error_reason = pw.CharField(max_length=64, default="")
    error_message = pw.TextField(default="")
    revision = pw.BigIntegerField(default=0)
    request_id = pw.CharField(max_length=128, null=True, unique=True)
    claimed_by = pw.CharField(max_length=64, default="")
    created_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)
    updated_at = pw.DateTimeField(default=utcnow)


class JobLog(BaseModel):
    id = pw.AutoField()
    job_id = pw.CharField(max_length=64, index=True)
    step = pw.CharField(max_length=64)
    status = pw.CharField(max_length=16)
    message = pw.TextField(default="")
    started_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)


class Command(BaseModel):
    """Durable outbox of commands to a VMA (at-least-once delivery; the VMA deduplicates by id)."""

    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    appliance_id: str  # set by Peewee for the foreign key
    appliance = pw.ForeignKeyField(Appliance, backref="commands", on_delete="CASCADE")
    kind = pw.CharField(max_length=32)
    payload = pw.BlobField()  # the serialized vma.v1.Command, exactly as sent
    job_id = pw.CharField(max_length=64, default="", index=True)
    status = pw.CharField(max_length=16, default="pending", index=True)
    attempts = pw.IntegerField(default=0)
    created_at = pw.DateTimeField(default=utcnow)
    sent_at = pw.DateTimeField(null=True)
    completed_at = pw.DateTimeField(null=True)
    result_outcome = pw.CharField(max_length=16, default="")
    result_detail = pw.TextField(default="")
    result_payload = pw.BlobField(null=True)


class NetworkMapping(BaseModel):
    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    vm_context_id = pw.CharField(max_length=64, default="", index=True)
    source_network = pw.CharField(max_length=255)
    target_network_id = pw.CharField(max_length=64)
    static_ip = pw.CharField(max_length=64, default="")
    keep_mac = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("vm_context_id", "source_network"), True),)


class WatchRevision(BaseModel):
    """One row: watch revisions up to `reserved_up_to` may have been handed out (revisions.RevisionReservations)."""

    id = pw.IntegerField(primary_key=True)
    reserved_up_to = pw.BigIntegerField(default=0)


class ApiToken(BaseModel):
    """An operator's API token (security/tokens.py): only the SHA-256 of its secret is kept."""

    id = pw.CharField(primary_key=True, max_length=16)
    name = pw.CharField(max_length=63)
    role = pw.CharField(max_length=16)
    secret_hash = pw.CharField(max_length=64)
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField(null=True)
    revoked_at = pw.DateTimeField(null=True)


class IdempotencyRecord(BaseModel):
    """The first answer to a mutating call with a request_id (oma_server/idempotency.py, AIP-155). Written in the
    transaction of the call's first change (`response` still null), the answer added once it is known."""

    method = pw.CharField(max_length=255)
    request_id = pw.CharField(max_length=128)
    fingerprint = pw.CharField(max_length=64)  # sha256 of the request without its request_id
    call_id = pw.CharField(max_length=32)  # which call wrote it (its units of work may run side by side)
    response = pw.BlobField(null=True)
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField(index=True)

    class Meta:
        primary_key = pw.CompositeKey("method", "request_id")


class AuditEntry(BaseModel):
    """One mutating RPC (security/audit.py): who, what, on which resource, when, and how it ended. Written before
    the call runs (outcome UNFINISHED) and completed after, so a call cut by a crash still shows as attempted."""

    id = pw.BigAutoField()
    at = pw.DateTimeField(default=utcnow, index=True)
    actor = pw.CharField(max_length=128)
    token_id = pw.CharField(max_length=16, default="", index=True)
    method = pw.CharField(max_length=128, index=True)
    resource = pw.CharField(max_length=255, default="")
    peer = pw.CharField(max_length=128, default="")
    outcome = pw.CharField(max_length=32, default="UNFINISHED")
    reason = pw.CharField(max_length=64, default="")
    finished_at = pw.DateTimeField(null=True)


class Schedule(BaseModel):
    """A replication schedule (oma_server/schedules): what it targets, when it fires, what it did last.

    `next_slot_at` and `next_run_at` (the slot plus its jitter) are naive UTC; a due schedule waiting for a free place
    keeps its past `next_run_at` until its sync starts, so a restart finds it due again.
    """

    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    name = pw.CharField(max_length=255, default="")
    target_kind = pw.CharField(max_length=16)
    target_id = pw.CharField(max_length=64)
    interval_seconds = pw.IntegerField(default=0)
    cron = pw.CharField(max_length=255, default="")
    time_zone = pw.CharField(max_length=64, default="")
    jitter_seconds = pw.IntegerField(default=0)
    rpo_target_seconds = pw.IntegerField()
    #: interval slots are counted from here (creation, or the last timing change)
    anchor_at = pw.DateTimeField()
    paused = pw.BooleanField(default=False)
    next_slot_at = pw.DateTimeField(null=True)
    next_run_at = pw.DateTimeField(null=True, index=True)
    last_run_at = pw.DateTimeField(null=True)
    last_job_id = pw.CharField(max_length=64, default="")
    last_outcome = pw.CharField(max_length=512, default="")
    request_id = pw.CharField(max_length=128, null=True, unique=True)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("target_kind", "target_id"), True),)


class BandwidthLimit(BaseModel):
    """A copy-rate limit on an appliance or a replication job (oma_server/bandwidth): a rate outside windows and
    weekly windows with their own rate (`windows`: a list of {days, start, end, bytes_per_second}, first match wins)
    in a time zone. One per target; a job's ends with the job."""

    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    target_kind = pw.CharField(max_length=16)
    target_id = pw.CharField(max_length=64)
    bytes_per_second = pw.BigIntegerField(default=0)
    windows = JsonField(default=list)
    time_zone = pw.CharField(max_length=64, default="")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("target_kind", "target_id"), True),)


class MachineGroup(BaseModel):
    """A machine group (oma_server/groups): VMs failed over, cleaned up and scheduled together, in a boot order."""

    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    name = pw.CharField(max_length=255, unique=True)
    description = pw.CharField(max_length=1024, default="")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


class GroupMember(BaseModel):
    """A VM of a machine group; a VM is in at most one group. Lower boot orders boot first; equal ones together."""

    group_id: str  # set by Peewee for the foreign keys
    vm_context_id: str
    group = pw.ForeignKeyField(MachineGroup, backref="members", on_delete="CASCADE")
    vm_context = pw.ForeignKeyField(VmContext, unique=True, on_delete="CASCADE")
    boot_order = pw.IntegerField(default=0)


class GroupRun(BaseModel):
    """A failover or cleanup of a machine group (oma_server/groups/runs.py): its members' jobs tier by tier.

    `members` is the plan, fixed at the start: [{vm_context_id, vm_name, boot_order, job_id, status, message}], the
    job ids written as each member's job starts (the start's request_id names the run and the VM, so a restart
    between the start and the write finds the same job).
    """

    id = pw.CharField(primary_key=True, max_length=64, default=new_id)
    group_id = pw.CharField(max_length=64, index=True)
    group_name = pw.CharField(max_length=255)
    kind = pw.CharField(max_length=16)  # test_failover | live_failover | cleanup
    status = pw.CharField(max_length=16, default="running")  # running | completed | failed
    members = JsonField(default=list)
    current_boot_order = pw.IntegerField(null=True)
    error_message = pw.TextField(default="")
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)
    finished_at = pw.DateTimeField(null=True)


class SchemaMigration(BaseModel):
    version = pw.IntegerField(primary_key=True)
    name = pw.CharField(max_length=128)
    applied_at = pw.DateTimeField(default=utcnow)


ALL_MODELS: list[type[BaseModel]] = [
    Appliance,
    ApplianceCertificate,
    VmContext,
    Disk,
    ChangeIdRecord,
    Volume,
    NbdExport,
    ReplicationJob,
    JobDisk,
    FailoverJob,
    JobLog,
    Command,
    NetworkMapping,
    WatchRevision,
    ApiToken,
    IdempotencyRecord,
    AuditEntry,
    Schedule,
    BandwidthLimit,
    MachineGroup,
    GroupMember,
    GroupRun,
]
