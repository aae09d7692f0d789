from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from oma.common.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicationJobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICATION_JOB_KIND_UNSPECIFIED: _ClassVar[ReplicationJobKind]
    REPLICATION_JOB_KIND_INITIAL: _ClassVar[ReplicationJobKind]
    REPLICATION_JOB_KIND_INCREMENTAL: _ClassVar[ReplicationJobKind]
    REPLICATION_JOB_KIND_FINAL: _ClassVar[ReplicationJobKind]

class ReplicationJobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICATION_JOB_STATUS_UNSPECIFIED: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_PENDING: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_PROVISIONING: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_WAITING_FOR_VMA: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_REPLICATING: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_STALLED: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_COMPLETING: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_COMPLETED: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_FAILED: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_CANCELLING: _ClassVar[ReplicationJobStatus]
    REPLICATION_JOB_STATUS_CANCELLED: _ClassVar[ReplicationJobStatus]
REPLICATION_JOB_KIND_UNSPECIFIED: ReplicationJobKind
REPLICATION_JOB_KIND_INITIAL: ReplicationJobKind
REPLICATION_JOB_KIND_INCREMENTAL: ReplicationJobKind
REPLICATION_JOB_KIND_FINAL: ReplicationJobKind
REPLICATION_JOB_STATUS_UNSPECIFIED: ReplicationJobStatus
REPLICATION_JOB_STATUS_PENDING: ReplicationJobStatus
REPLICATION_JOB_STATUS_PROVISIONING: ReplicationJobStatus
REPLICATION_JOB_STATUS_WAITING_FOR_VMA: ReplicationJobStatus
REPLICATION_JOB_STATUS_REPLICATING: ReplicationJobStatus
REPLICATION_JOB_STATUS_STALLED: ReplicationJobStatus
REPLICATION_JOB_STATUS_COMPLETING: ReplicationJobStatus
REPLICATION_JOB_STATUS_COMPLETED: ReplicationJobStatus
REPLICATION_JOB_STATUS_FAILED: ReplicationJobStatus
REPLICATION_JOB_STATUS_CANCELLING: ReplicationJobStatus
REPLICATION_JOB_STATUS_CANCELLED: ReplicationJobStatus

class DiskReplicationProgress(_message.Message):
    __slots__ = ("disk_id", "disk_key", "bytes_done", "bytes_total", "throughput_bytes_per_second", "phase", "mode", "previous_change_id", "new_change_id", "completed", "nbd_uri", "full_copy_reason")
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_KEY_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    NBD_URI_FIELD_NUMBER: _ClassVar[int]
    FULL_COPY_REASON_FIELD_NUMBER: _ClassVar[int]
    disk_id: str
    disk_key: int
    bytes_done: int
    bytes_total: int
    throughput_bytes_per_second: int
    phase: _jobs_pb2.CopyPhase
    mode: _jobs_pb2.CopyMode
    previous_change_id: str
    new_change_id: str
    completed: bool
    nbd_uri: str
    full_copy_reason: str
    def __init__(self, disk_id: _Optional[str] = ..., disk_key: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., throughput_bytes_per_second: _Optional[int] = ..., phase: _Optional[_Union[_jobs_pb2.CopyPhase, str]] = ..., mode: _Optional[_Union[_jobs_pb2.CopyMode, str]] = ..., previous_change_id: _Optional[str] = ..., new_change_id: _Optional[str] = ..., completed: bool = ..., nbd_uri: _Optional[str] = ..., full_copy_reason: _Optional[str] = ...) -> None: ...

class ReplicationJob(_message.Message):
    __slots__ = ("id", "vm_context_id", "appliance_id", "kind", "status", "phase", "current_operation", "bytes_done", "bytes_total", "percent", "throughput_bytes_per_second", "eta", "disks", "error", "last_sequence", "revision", "created_at", "started_at", "finished_at", "updated_at", "retry_of")
    ID_FIELD_NUMBER: _ClassVar[int]
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIANCE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_OPERATION_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_FIELD_NUMBER: _ClassVar[int]
    id: str
    vm_context_id: str
    appliance_id: str
    kind: ReplicationJobKind
    status: ReplicationJobStatus
    phase: _jobs_pb2.CopyPhase
    current_operation: str
    bytes_done: int
    bytes_total: int
    percent: float
    throughput_bytes_per_second: int
    eta: _duration_pb2.Duration
    disks: _containers.RepeatedCompositeFieldContainer[DiskReplicationProgress]
    error: _jobs_pb2.JobError
    last_sequence: int
    revision: int
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    retry_of: str
    def __init__(self, id: _Optional[str] = ..., vm_context_id: _Optional[str] = ..., appliance_id: _Optional[str] = ..., kind: _Optional[_Union[ReplicationJobKind, str]] = ..., status: _Optional[_Union[ReplicationJobStatus, str]] = ..., phase: _Optional[_Union[_jobs_pb2.CopyPhase, str]] = ..., current_operation: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., percent: _Optional[float] = ..., throughput_bytes_per_second: _Optional[int] = ..., eta: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., disks: _Optional[_Iterable[_Union[DiskReplicationProgress, _Mapping]]] = ..., error: _Optional[_Union[_jobs_pb2.JobError, _Mapping]] = ..., last_sequence: _Optional[int] = ..., revision: _Optional[int] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., retry_of: _Optional[str] = ...) -> None: ...

class StartReplicationRequest(_message.Message):
    __slots__ = ("vm_context_id", "kind", "request_id")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    kind: ReplicationJobKind
    request_id: str
    def __init__(self, vm_context_id: _Optional[str] = ..., kind: _Optional[_Union[ReplicationJobKind, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartReplicationResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: ReplicationJob
    def __init__(self, job: _Optional[_Union[ReplicationJob, _Mapping]] = ...) -> None: ...

class GetReplicationJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetReplicationJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: ReplicationJob
    def __init__(self, job: _Optional[_Union[ReplicationJob, _Mapping]] = ...) -> None: ...

class ListReplicationJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "vm_context_id", "statuses", "appliance_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    APPLIANCE_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    vm_context_id: str
    statuses: _containers.RepeatedScalarFieldContainer[ReplicationJobStatus]
    appliance_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., vm_context_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[ReplicationJobStatus, str]]] = ..., appliance_id: _Optional[str] = ...) -> None: ...

class ListReplicationJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[ReplicationJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[ReplicationJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelReplicationJobRequest(_message.Message):
    __slots__ = ("id", "request_id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ..., force: bool = ...) -> None: ...

class CancelReplicationJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: ReplicationJob
    def __init__(self, job: _Optional[_Union[ReplicationJob, _Mapping]] = ...) -> None: ...

class RetryReplicationJobRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RetryReplicationJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: ReplicationJob
    def __init__(self, job: _Optional[_Union[ReplicationJob, _Mapping]] = ...) -> None: ...
