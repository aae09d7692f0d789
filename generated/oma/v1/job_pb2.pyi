from google.protobuf import timestamp_pb2 as _timestamp_pb2
from oma.v1 import failover_pb2 as _failover_pb2
from oma.v1 import replication_pb2 as _replication_pb2
from oma.v1 import schedule_pb2 as _schedule_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_KIND_UNSPECIFIED: _ClassVar[UpdateKind]
    UPDATE_KIND_SNAPSHOT: _ClassVar[UpdateKind]
    UPDATE_KIND_CHANGE: _ClassVar[UpdateKind]
    UPDATE_KIND_PROGRESS_NOTIFY: _ClassVar[UpdateKind]
    UPDATE_KIND_SYNCED: _ClassVar[UpdateKind]

class JobLogStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_LOG_STATUS_UNSPECIFIED: _ClassVar[JobLogStatus]
    JOB_LOG_STATUS_RUNNING: _ClassVar[JobLogStatus]
    JOB_LOG_STATUS_COMPLETED: _ClassVar[JobLogStatus]
    JOB_LOG_STATUS_FAILED: _ClassVar[JobLogStatus]
    JOB_LOG_STATUS_SKIPPED: _ClassVar[JobLogStatus]
    JOB_LOG_STATUS_INFO: _ClassVar[JobLogStatus]
UPDATE_KIND_UNSPECIFIED: UpdateKind
UPDATE_KIND_SNAPSHOT: UpdateKind
UPDATE_KIND_CHANGE: UpdateKind
UPDATE_KIND_PROGRESS_NOTIFY: UpdateKind
UPDATE_KIND_SYNCED: UpdateKind
JOB_LOG_STATUS_UNSPECIFIED: JobLogStatus
JOB_LOG_STATUS_RUNNING: JobLogStatus
JOB_LOG_STATUS_COMPLETED: JobLogStatus
JOB_LOG_STATUS_FAILED: JobLogStatus
JOB_LOG_STATUS_SKIPPED: JobLogStatus
JOB_LOG_STATUS_INFO: JobLogStatus

class JobUpdate(_message.Message):
    __slots__ = ("kind", "revision", "replication_job", "failover_job", "vm_rpo")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_JOB_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_JOB_FIELD_NUMBER: _ClassVar[int]
    VM_RPO_FIELD_NUMBER: _ClassVar[int]
    kind: UpdateKind
    revision: int
    replication_job: _replication_pb2.ReplicationJob
    failover_job: _failover_pb2.FailoverJob
    vm_rpo: _schedule_pb2.VmRpo
    def __init__(self, kind: _Optional[_Union[UpdateKind, str]] = ..., revision: _Optional[int] = ..., replication_job: _Optional[_Union[_replication_pb2.ReplicationJob, _Mapping]] = ..., failover_job: _Optional[_Union[_failover_pb2.FailoverJob, _Mapping]] = ..., vm_rpo: _Optional[_Union[_schedule_pb2.VmRpo, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("replication_job", "failover_job")
    REPLICATION_JOB_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_JOB_FIELD_NUMBER: _ClassVar[int]
    replication_job: _replication_pb2.ReplicationJob
    failover_job: _failover_pb2.FailoverJob
    def __init__(self, replication_job: _Optional[_Union[_replication_pb2.ReplicationJob, _Mapping]] = ..., failover_job: _Optional[_Union[_failover_pb2.FailoverJob, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "vm_context_id", "open_only")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_ONLY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    vm_context_id: str
    open_only: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., vm_context_id: _Optional[str] = ..., open_only: bool = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id", "request_id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ..., force: bool = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "from_revision", "keep_following")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    KEEP_FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_revision: int
    keep_following: bool
    def __init__(self, job_id: _Optional[str] = ..., from_revision: _Optional[int] = ..., keep_following: bool = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("update",)
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    update: JobUpdate
    def __init__(self, update: _Optional[_Union[JobUpdate, _Mapping]] = ...) -> None: ...

class WatchJobsRequest(_message.Message):
    __slots__ = ("vm_context_id", "from_revision", "include_finished")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FINISHED_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    from_revision: int
    include_finished: bool
    def __init__(self, vm_context_id: _Optional[str] = ..., from_revision: _Optional[int] = ..., include_finished: bool = ...) -> None: ...

class WatchJobsResponse(_message.Message):
    __slots__ = ("update",)
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    update: JobUpdate
    def __init__(self, update: _Optional[_Union[JobUpdate, _Mapping]] = ...) -> None: ...

class JobLogEntry(_message.Message):
    __slots__ = ("id", "job_id", "step", "status", "message", "started_at", "finished_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    job_id: str
    step: str
    status: JobLogStatus
    message: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., job_id: _Optional[str] = ..., step: _Optional[str] = ..., status: _Optional[_Union[JobLogStatus, str]] = ..., message: _Optional[str] = ..., started_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListJobLogEntriesRequest(_message.Message):
    __slots__ = ("job_id", "page_size", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page_size: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobLogEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[JobLogEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[JobLogEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
