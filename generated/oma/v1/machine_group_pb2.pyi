from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GroupRunKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_RUN_KIND_UNSPECIFIED: _ClassVar[GroupRunKind]
    GROUP_RUN_KIND_TEST_FAILOVER: _ClassVar[GroupRunKind]
    GROUP_RUN_KIND_LIVE_FAILOVER: _ClassVar[GroupRunKind]
    GROUP_RUN_KIND_CLEANUP: _ClassVar[GroupRunKind]

class GroupRunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_RUN_STATUS_UNSPECIFIED: _ClassVar[GroupRunStatus]
    GROUP_RUN_STATUS_PENDING: _ClassVar[GroupRunStatus]
    GROUP_RUN_STATUS_RUNNING: _ClassVar[GroupRunStatus]
    GROUP_RUN_STATUS_COMPLETED: _ClassVar[GroupRunStatus]
    GROUP_RUN_STATUS_FAILED: _ClassVar[GroupRunStatus]
    GROUP_RUN_STATUS_SKIPPED: _ClassVar[GroupRunStatus]
    GROUP_RUN_STATUS_NOT_STARTED: _ClassVar[GroupRunStatus]
    GROUP_RUN_STATUS_CANCELLING: _ClassVar[GroupRunStatus]
    GROUP_RUN_STATUS_CANCELLED: _ClassVar[GroupRunStatus]
GROUP_RUN_KIND_UNSPECIFIED: GroupRunKind
GROUP_RUN_KIND_TEST_FAILOVER: GroupRunKind
GROUP_RUN_KIND_LIVE_FAILOVER: GroupRunKind
GROUP_RUN_KIND_CLEANUP: GroupRunKind
GROUP_RUN_STATUS_UNSPECIFIED: GroupRunStatus
GROUP_RUN_STATUS_PENDING: GroupRunStatus
GROUP_RUN_STATUS_RUNNING: GroupRunStatus
GROUP_RUN_STATUS_COMPLETED: GroupRunStatus
GROUP_RUN_STATUS_FAILED: GroupRunStatus
GROUP_RUN_STATUS_SKIPPED: GroupRunStatus
GROUP_RUN_STATUS_NOT_STARTED: GroupRunStatus
GROUP_RUN_STATUS_CANCELLING: GroupRunStatus
GROUP_RUN_STATUS_CANCELLED: GroupRunStatus

class MachineGroupMember(_message.Message):
    __slots__ = ("vm_context_id", "boot_order")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ORDER_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    boot_order: int
    def __init__(self, vm_context_id: _Optional[str] = ..., boot_order: _Optional[int] = ...) -> None: ...

class MachineGroupSpec(_message.Message):
    __slots__ = ("name", "description", "members")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    members: _containers.RepeatedCompositeFieldContainer[MachineGroupMember]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., members: _Optional[_Iterable[_Union[MachineGroupMember, _Mapping]]] = ...) -> None: ...

class MachineGroup(_message.Message):
    __slots__ = ("id", "spec", "schedule_id", "last_run_id", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: MachineGroupSpec
    schedule_id: str
    last_run_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[MachineGroupSpec, _Mapping]] = ..., schedule_id: _Optional[str] = ..., last_run_id: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GroupRunMember(_message.Message):
    __slots__ = ("vm_context_id", "vm_name", "boot_order", "failover_job_id", "status", "message")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_ORDER_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    vm_name: str
    boot_order: int
    failover_job_id: str
    status: GroupRunStatus
    message: str
    def __init__(self, vm_context_id: _Optional[str] = ..., vm_name: _Optional[str] = ..., boot_order: _Optional[int] = ..., failover_job_id: _Optional[str] = ..., status: _Optional[_Union[GroupRunStatus, str]] = ..., message: _Optional[str] = ...) -> None: ...

class GroupRun(_message.Message):
    __slots__ = ("id", "group_id", "group_name", "kind", "status", "members", "current_boot_order", "error_message", "created_at", "finished_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_BOOT_ORDER_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    group_id: str
    group_name: str
    kind: GroupRunKind
    status: GroupRunStatus
    members: _containers.RepeatedCompositeFieldContainer[GroupRunMember]
    current_boot_order: int
    error_message: str
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., group_id: _Optional[str] = ..., group_name: _Optional[str] = ..., kind: _Optional[_Union[GroupRunKind, str]] = ..., status: _Optional[_Union[GroupRunStatus, str]] = ..., members: _Optional[_Iterable[_Union[GroupRunMember, _Mapping]]] = ..., current_boot_order: _Optional[int] = ..., error_message: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateMachineGroupRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: MachineGroupSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[MachineGroupSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateMachineGroupResponse(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: MachineGroup
    def __init__(self, group: _Optional[_Union[MachineGroup, _Mapping]] = ...) -> None: ...

class GetMachineGroupRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetMachineGroupResponse(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: MachineGroup
    def __init__(self, group: _Optional[_Union[MachineGroup, _Mapping]] = ...) -> None: ...

class ListMachineGroupsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMachineGroupsResponse(_message.Message):
    __slots__ = ("groups", "next_page_token")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[MachineGroup]
    next_page_token: str
    def __init__(self, groups: _Optional[_Iterable[_Union[MachineGroup, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateMachineGroupRequest(_message.Message):
    __slots__ = ("id", "spec", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: MachineGroupSpec
    request_id: str
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[MachineGroupSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateMachineGroupResponse(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: MachineGroup
    def __init__(self, group: _Optional[_Union[MachineGroup, _Mapping]] = ...) -> None: ...

class DeleteMachineGroupRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteMachineGroupResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartGroupFailoverRequest(_message.Message):
    __slots__ = ("group_id", "kind", "request_id")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    kind: GroupRunKind
    request_id: str
    def __init__(self, group_id: _Optional[str] = ..., kind: _Optional[_Union[GroupRunKind, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartGroupFailoverResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: GroupRun
    def __init__(self, run: _Optional[_Union[GroupRun, _Mapping]] = ...) -> None: ...

class CleanupGroupFailoverRequest(_message.Message):
    __slots__ = ("group_id", "request_id")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    request_id: str
    def __init__(self, group_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CleanupGroupFailoverResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: GroupRun
    def __init__(self, run: _Optional[_Union[GroupRun, _Mapping]] = ...) -> None: ...

class CancelGroupRunRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CancelGroupRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: GroupRun
    def __init__(self, run: _Optional[_Union[GroupRun, _Mapping]] = ...) -> None: ...

class GetGroupRunRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetGroupRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: GroupRun
    def __init__(self, run: _Optional[_Union[GroupRun, _Mapping]] = ...) -> None: ...

class ListGroupRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "group_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    group_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., group_id: _Optional[str] = ...) -> None: ...

class ListGroupRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[GroupRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[GroupRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
