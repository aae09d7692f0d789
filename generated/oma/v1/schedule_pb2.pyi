from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScheduleTargetKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_TARGET_KIND_UNSPECIFIED: _ClassVar[ScheduleTargetKind]
    SCHEDULE_TARGET_KIND_VM_CONTEXT: _ClassVar[ScheduleTargetKind]
    SCHEDULE_TARGET_KIND_MACHINE_GROUP: _ClassVar[ScheduleTargetKind]

class RpoStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RPO_STATUS_UNSPECIFIED: _ClassVar[RpoStatus]
    RPO_STATUS_NO_TARGET: _ClassVar[RpoStatus]
    RPO_STATUS_MET: _ClassVar[RpoStatus]
    RPO_STATUS_BREACHED: _ClassVar[RpoStatus]
SCHEDULE_TARGET_KIND_UNSPECIFIED: ScheduleTargetKind
SCHEDULE_TARGET_KIND_VM_CONTEXT: ScheduleTargetKind
SCHEDULE_TARGET_KIND_MACHINE_GROUP: ScheduleTargetKind
RPO_STATUS_UNSPECIFIED: RpoStatus
RPO_STATUS_NO_TARGET: RpoStatus
RPO_STATUS_MET: RpoStatus
RPO_STATUS_BREACHED: RpoStatus

class ScheduleTarget(_message.Message):
    __slots__ = ("kind", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: ScheduleTargetKind
    id: str
    def __init__(self, kind: _Optional[_Union[ScheduleTargetKind, str]] = ..., id: _Optional[str] = ...) -> None: ...

class ScheduleSpec(_message.Message):
    __slots__ = ("name", "target", "interval_seconds", "cron", "time_zone", "jitter_seconds", "rpo_target_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    JITTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RPO_TARGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: ScheduleTarget
    interval_seconds: int
    cron: str
    time_zone: str
    jitter_seconds: int
    rpo_target_seconds: int
    def __init__(self, name: _Optional[str] = ..., target: _Optional[_Union[ScheduleTarget, _Mapping]] = ..., interval_seconds: _Optional[int] = ..., cron: _Optional[str] = ..., time_zone: _Optional[str] = ..., jitter_seconds: _Optional[int] = ..., rpo_target_seconds: _Optional[int] = ...) -> None: ...

class Schedule(_message.Message):
    __slots__ = ("id", "spec", "paused", "next_slot_at", "next_run_at", "last_run_at", "last_job_id", "last_outcome", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NEXT_SLOT_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: ScheduleSpec
    paused: bool
    next_slot_at: _timestamp_pb2.Timestamp
    next_run_at: _timestamp_pb2.Timestamp
    last_run_at: _timestamp_pb2.Timestamp
    last_job_id: str
    last_outcome: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., paused: bool = ..., next_slot_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., next_run_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., last_run_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., last_job_id: _Optional[str] = ..., last_outcome: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VmRpo(_message.Message):
    __slots__ = ("vm_context_id", "status", "reason", "target_seconds", "recovery_point", "current_seconds", "recovery_point_job_id", "schedule_id", "next_sync_at", "schedule_paused")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TARGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_POINT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_POINT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_SYNC_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_PAUSED_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    status: RpoStatus
    reason: str
    target_seconds: int
    recovery_point: _timestamp_pb2.Timestamp
    current_seconds: int
    recovery_point_job_id: str
    schedule_id: str
    next_sync_at: _timestamp_pb2.Timestamp
    schedule_paused: bool
    def __init__(self, vm_context_id: _Optional[str] = ..., status: _Optional[_Union[RpoStatus, str]] = ..., reason: _Optional[str] = ..., target_seconds: _Optional[int] = ..., recovery_point: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., current_seconds: _Optional[int] = ..., recovery_point_job_id: _Optional[str] = ..., schedule_id: _Optional[str] = ..., next_sync_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., schedule_paused: bool = ...) -> None: ...

class CreateScheduleRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: ScheduleSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class GetScheduleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "target_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    target_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., target_id: _Optional[str] = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules", "next_page_token")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[Schedule]
    next_page_token: str
    def __init__(self, schedules: _Optional[_Iterable[_Union[Schedule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateScheduleRequest(_message.Message):
    __slots__ = ("id", "spec", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: ScheduleSpec
    request_id: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class DeleteScheduleRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteScheduleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseScheduleRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PauseScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...

class ResumeScheduleRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ResumeScheduleResponse(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: Schedule
    def __init__(self, schedule: _Optional[_Union[Schedule, _Mapping]] = ...) -> None: ...
