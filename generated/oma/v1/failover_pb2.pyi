from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from oma.common.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailoverJobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILOVER_JOB_KIND_UNSPECIFIED: _ClassVar[FailoverJobKind]
    FAILOVER_JOB_KIND_TEST: _ClassVar[FailoverJobKind]
    FAILOVER_JOB_KIND_LIVE: _ClassVar[FailoverJobKind]
    FAILOVER_JOB_KIND_CLEANUP: _ClassVar[FailoverJobKind]
    FAILOVER_JOB_KIND_ROLLBACK: _ClassVar[FailoverJobKind]
    FAILOVER_JOB_KIND_POWER_ON_SOURCE: _ClassVar[FailoverJobKind]
    FAILOVER_JOB_KIND_POWER_OFF_SOURCE: _ClassVar[FailoverJobKind]
    FAILOVER_JOB_KIND_VERIFY: _ClassVar[FailoverJobKind]

class FailoverJobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILOVER_JOB_STATUS_UNSPECIFIED: _ClassVar[FailoverJobStatus]
    FAILOVER_JOB_STATUS_PENDING: _ClassVar[FailoverJobStatus]
    FAILOVER_JOB_STATUS_RUNNING: _ClassVar[FailoverJobStatus]
    FAILOVER_JOB_STATUS_COMPLETED: _ClassVar[FailoverJobStatus]
    FAILOVER_JOB_STATUS_FAILED: _ClassVar[FailoverJobStatus]
    FAILOVER_JOB_STATUS_CANCELLED: _ClassVar[FailoverJobStatus]
    FAILOVER_JOB_STATUS_SCHEDULED: _ClassVar[FailoverJobStatus]

class DeadlineMissedAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEADLINE_MISSED_ACTION_UNSPECIFIED: _ClassVar[DeadlineMissedAction]
    DEADLINE_MISSED_ACTION_WAIT: _ClassVar[DeadlineMissedAction]
    DEADLINE_MISSED_ACTION_CANCEL: _ClassVar[DeadlineMissedAction]

class StepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATUS_UNSPECIFIED: _ClassVar[StepStatus]
    STEP_STATUS_PENDING: _ClassVar[StepStatus]
    STEP_STATUS_RUNNING: _ClassVar[StepStatus]
    STEP_STATUS_COMPLETED: _ClassVar[StepStatus]
    STEP_STATUS_FAILED: _ClassVar[StepStatus]
    STEP_STATUS_SKIPPED: _ClassVar[StepStatus]
    STEP_STATUS_CANCELLED: _ClassVar[StepStatus]
FAILOVER_JOB_KIND_UNSPECIFIED: FailoverJobKind
FAILOVER_JOB_KIND_TEST: FailoverJobKind
FAILOVER_JOB_KIND_LIVE: FailoverJobKind
FAILOVER_JOB_KIND_CLEANUP: FailoverJobKind
FAILOVER_JOB_KIND_ROLLBACK: FailoverJobKind
FAILOVER_JOB_KIND_POWER_ON_SOURCE: FailoverJobKind
FAILOVER_JOB_KIND_POWER_OFF_SOURCE: FailoverJobKind
FAILOVER_JOB_KIND_VERIFY: FailoverJobKind
FAILOVER_JOB_STATUS_UNSPECIFIED: FailoverJobStatus
FAILOVER_JOB_STATUS_PENDING: FailoverJobStatus
FAILOVER_JOB_STATUS_RUNNING: FailoverJobStatus
FAILOVER_JOB_STATUS_COMPLETED: FailoverJobStatus
FAILOVER_JOB_STATUS_FAILED: FailoverJobStatus
FAILOVER_JOB_STATUS_CANCELLED: FailoverJobStatus
FAILOVER_JOB_STATUS_SCHEDULED: FailoverJobStatus
DEADLINE_MISSED_ACTION_UNSPECIFIED: DeadlineMissedAction
DEADLINE_MISSED_ACTION_WAIT: DeadlineMissedAction
DEADLINE_MISSED_ACTION_CANCEL: DeadlineMissedAction
STEP_STATUS_UNSPECIFIED: StepStatus
STEP_STATUS_PENDING: StepStatus
STEP_STATUS_RUNNING: StepStatus
STEP_STATUS_COMPLETED: StepStatus
STEP_STATUS_FAILED: StepStatus
STEP_STATUS_SKIPPED: StepStatus
STEP_STATUS_CANCELLED: StepStatus

class FailoverStep(_message.Message):
    __slots__ = ("name", "status", "started_at", "finished_at", "error", "attempts", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: StepStatus
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    error: str
    attempts: int
    message: str
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[StepStatus, str]] = ..., started_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class FailoverJob(_message.Message):
    __slots__ = ("id", "vm_context_id", "kind", "status", "steps", "target_vm_id", "target_vm_name", "snapshot_ids", "error", "revision", "created_at", "finished_at", "current_step", "outcome", "cancel_requested", "start_at", "final_sync_deadline", "on_deadline_missed", "deadline_missed")
    ID_FIELD_NUMBER: _ClassVar[int]
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TARGET_VM_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_VM_NAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    START_AT_FIELD_NUMBER: _ClassVar[int]
    FINAL_SYNC_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    ON_DEADLINE_MISSED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MISSED_FIELD_NUMBER: _ClassVar[int]
    id: str
    vm_context_id: str
    kind: FailoverJobKind
    status: FailoverJobStatus
    steps: _containers.RepeatedCompositeFieldContainer[FailoverStep]
    target_vm_id: str
    target_vm_name: str
    snapshot_ids: _containers.RepeatedScalarFieldContainer[str]
    error: _jobs_pb2.JobError
    revision: int
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    current_step: str
    outcome: str
    cancel_requested: bool
    start_at: _timestamp_pb2.Timestamp
    final_sync_deadline: _timestamp_pb2.Timestamp
    on_deadline_missed: DeadlineMissedAction
    deadline_missed: bool
    def __init__(self, id: _Optional[str] = ..., vm_context_id: _Optional[str] = ..., kind: _Optional[_Union[FailoverJobKind, str]] = ..., status: _Optional[_Union[FailoverJobStatus, str]] = ..., steps: _Optional[_Iterable[_Union[FailoverStep, _Mapping]]] = ..., target_vm_id: _Optional[str] = ..., target_vm_name: _Optional[str] = ..., snapshot_ids: _Optional[_Iterable[str]] = ..., error: _Optional[_Union[_jobs_pb2.JobError, _Mapping]] = ..., revision: _Optional[int] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., current_step: _Optional[str] = ..., outcome: _Optional[str] = ..., cancel_requested: bool = ..., start_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., final_sync_deadline: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., on_deadline_missed: _Optional[_Union[DeadlineMissedAction, str]] = ..., deadline_missed: bool = ...) -> None: ...

class ReadinessCheck(_message.Message):
    __slots__ = ("name", "passed", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    passed: bool
    reason: str
    def __init__(self, name: _Optional[str] = ..., passed: bool = ..., reason: _Optional[str] = ...) -> None: ...

class CheckFailoverReadinessRequest(_message.Message):
    __slots__ = ("vm_context_id", "kind")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    kind: FailoverJobKind
    def __init__(self, vm_context_id: _Optional[str] = ..., kind: _Optional[_Union[FailoverJobKind, str]] = ...) -> None: ...

class CheckFailoverReadinessResponse(_message.Message):
    __slots__ = ("checks", "ready")
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    checks: _containers.RepeatedCompositeFieldContainer[ReadinessCheck]
    ready: bool
    def __init__(self, checks: _Optional[_Iterable[_Union[ReadinessCheck, _Mapping]]] = ..., ready: bool = ...) -> None: ...

class StartFailoverRequest(_message.Message):
    __slots__ = ("vm_context_id", "kind", "service_offering_id", "request_id", "start_at", "final_sync_deadline", "on_deadline_missed")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SERVICE_OFFERING_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    START_AT_FIELD_NUMBER: _ClassVar[int]
    FINAL_SYNC_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    ON_DEADLINE_MISSED_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    kind: FailoverJobKind
    service_offering_id: str
    request_id: str
    start_at: _timestamp_pb2.Timestamp
    final_sync_deadline: _timestamp_pb2.Timestamp
    on_deadline_missed: DeadlineMissedAction
    def __init__(self, vm_context_id: _Optional[str] = ..., kind: _Optional[_Union[FailoverJobKind, str]] = ..., service_offering_id: _Optional[str] = ..., request_id: _Optional[str] = ..., start_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., final_sync_deadline: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., on_deadline_missed: _Optional[_Union[DeadlineMissedAction, str]] = ...) -> None: ...

class StartFailoverResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: FailoverJob
    def __init__(self, job: _Optional[_Union[FailoverJob, _Mapping]] = ...) -> None: ...

class CleanupFailoverRequest(_message.Message):
    __slots__ = ("vm_context_id", "request_id")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    request_id: str
    def __init__(self, vm_context_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CleanupFailoverResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: FailoverJob
    def __init__(self, job: _Optional[_Union[FailoverJob, _Mapping]] = ...) -> None: ...

class RollbackFailoverRequest(_message.Message):
    __slots__ = ("vm_context_id", "power_on_source", "request_id")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    POWER_ON_SOURCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    power_on_source: bool
    request_id: str
    def __init__(self, vm_context_id: _Optional[str] = ..., power_on_source: bool = ..., request_id: _Optional[str] = ...) -> None: ...

class RollbackFailoverResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: FailoverJob
    def __init__(self, job: _Optional[_Union[FailoverJob, _Mapping]] = ...) -> None: ...

class GetFailoverJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetFailoverJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: FailoverJob
    def __init__(self, job: _Optional[_Union[FailoverJob, _Mapping]] = ...) -> None: ...

class ListFailoverJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "vm_context_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    vm_context_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., vm_context_id: _Optional[str] = ...) -> None: ...

class ListFailoverJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[FailoverJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[FailoverJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class NetworkMapping(_message.Message):
    __slots__ = ("id", "vm_context_id", "source_network", "target_network_id", "static_ip", "keep_mac", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NETWORK_FIELD_NUMBER: _ClassVar[int]
    TARGET_NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    STATIC_IP_FIELD_NUMBER: _ClassVar[int]
    KEEP_MAC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    vm_context_id: str
    source_network: str
    target_network_id: str
    static_ip: str
    keep_mac: bool
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., vm_context_id: _Optional[str] = ..., source_network: _Optional[str] = ..., target_network_id: _Optional[str] = ..., static_ip: _Optional[str] = ..., keep_mac: bool = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateNetworkMappingRequest(_message.Message):
    __slots__ = ("mapping", "request_id")
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    mapping: NetworkMapping
    request_id: str
    def __init__(self, mapping: _Optional[_Union[NetworkMapping, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateNetworkMappingResponse(_message.Message):
    __slots__ = ("mapping",)
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    mapping: NetworkMapping
    def __init__(self, mapping: _Optional[_Union[NetworkMapping, _Mapping]] = ...) -> None: ...

class ListNetworkMappingsRequest(_message.Message):
    __slots__ = ("vm_context_id", "page_size", "page_token")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    page_size: int
    page_token: str
    def __init__(self, vm_context_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNetworkMappingsResponse(_message.Message):
    __slots__ = ("mappings", "next_page_token")
    MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    mappings: _containers.RepeatedCompositeFieldContainer[NetworkMapping]
    next_page_token: str
    def __init__(self, mappings: _Optional[_Iterable[_Union[NetworkMapping, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateNetworkMappingRequest(_message.Message):
    __slots__ = ("mapping", "update_mask", "request_id")
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    mapping: NetworkMapping
    update_mask: _field_mask_pb2.FieldMask
    request_id: str
    def __init__(self, mapping: _Optional[_Union[NetworkMapping, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateNetworkMappingResponse(_message.Message):
    __slots__ = ("mapping",)
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    mapping: NetworkMapping
    def __init__(self, mapping: _Optional[_Union[NetworkMapping, _Mapping]] = ...) -> None: ...

class DeleteNetworkMappingRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteNetworkMappingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
