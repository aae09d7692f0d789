from google.protobuf import timestamp_pb2 as _timestamp_pb2
from oma.common.v1 import inventory_pb2 as _inventory_pb2
from oma.v1 import failover_pb2 as _failover_pb2
from oma.v1 import schedule_pb2 as _schedule_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VmContextStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VM_CONTEXT_STATUS_UNSPECIFIED: _ClassVar[VmContextStatus]
    VM_CONTEXT_STATUS_DISCOVERED: _ClassVar[VmContextStatus]
    VM_CONTEXT_STATUS_REPLICATING: _ClassVar[VmContextStatus]
    VM_CONTEXT_STATUS_READY_FOR_FAILOVER: _ClassVar[VmContextStatus]
    VM_CONTEXT_STATUS_FAILED_OVER_TEST: _ClassVar[VmContextStatus]
    VM_CONTEXT_STATUS_FAILED_OVER_LIVE: _ClassVar[VmContextStatus]
    VM_CONTEXT_STATUS_COMPLETED: _ClassVar[VmContextStatus]
    VM_CONTEXT_STATUS_FAILED: _ClassVar[VmContextStatus]
    VM_CONTEXT_STATUS_CLEANUP_REQUIRED: _ClassVar[VmContextStatus]
VM_CONTEXT_STATUS_UNSPECIFIED: VmContextStatus
VM_CONTEXT_STATUS_DISCOVERED: VmContextStatus
VM_CONTEXT_STATUS_REPLICATING: VmContextStatus
VM_CONTEXT_STATUS_READY_FOR_FAILOVER: VmContextStatus
VM_CONTEXT_STATUS_FAILED_OVER_TEST: VmContextStatus
VM_CONTEXT_STATUS_FAILED_OVER_LIVE: VmContextStatus
VM_CONTEXT_STATUS_COMPLETED: VmContextStatus
VM_CONTEXT_STATUS_FAILED: VmContextStatus
VM_CONTEXT_STATUS_CLEANUP_REQUIRED: VmContextStatus

class ChangeIdRecord(_message.Message):
    __slots__ = ("change_id", "job_id", "recorded_at")
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    change_id: str
    job_id: str
    recorded_at: _timestamp_pb2.Timestamp
    def __init__(self, change_id: _Optional[str] = ..., job_id: _Optional[str] = ..., recorded_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Disk(_message.Message):
    __slots__ = ("id", "vm_context_id", "key", "label", "capacity_bytes", "datastore_path", "cbt_enabled", "unit_number", "last_change_id", "change_id_history", "volume_id", "export_name", "verification")
    ID_FIELD_NUMBER: _ClassVar[int]
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATASTORE_PATH_FIELD_NUMBER: _ClassVar[int]
    CBT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    UNIT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_ID_HISTORY_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    vm_context_id: str
    key: int
    label: str
    capacity_bytes: int
    datastore_path: str
    cbt_enabled: bool
    unit_number: int
    last_change_id: str
    change_id_history: _containers.RepeatedCompositeFieldContainer[ChangeIdRecord]
    volume_id: str
    export_name: str
    verification: DiskVerification
    def __init__(self, id: _Optional[str] = ..., vm_context_id: _Optional[str] = ..., key: _Optional[int] = ..., label: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., datastore_path: _Optional[str] = ..., cbt_enabled: bool = ..., unit_number: _Optional[int] = ..., last_change_id: _Optional[str] = ..., change_id_history: _Optional[_Iterable[_Union[ChangeIdRecord, _Mapping]]] = ..., volume_id: _Optional[str] = ..., export_name: _Optional[str] = ..., verification: _Optional[_Union[DiskVerification, _Mapping]] = ...) -> None: ...

class DiskVerification(_message.Message):
    __slots__ = ("digest", "algorithm", "block_size", "change_id", "job_id", "verified_at", "blocks_read", "block_count", "checked_at", "check_job_id", "check_outcome", "check_digest", "mismatched", "source_blocks_compared")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_READ_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    CHECK_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CHECK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MISMATCHED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_BLOCKS_COMPARED_FIELD_NUMBER: _ClassVar[int]
    digest: str
    algorithm: str
    block_size: int
    change_id: str
    job_id: str
    verified_at: _timestamp_pb2.Timestamp
    blocks_read: int
    block_count: int
    checked_at: _timestamp_pb2.Timestamp
    check_job_id: str
    check_outcome: str
    check_digest: str
    mismatched: _containers.RepeatedCompositeFieldContainer[BlockRange]
    source_blocks_compared: int
    def __init__(self, digest: _Optional[str] = ..., algorithm: _Optional[str] = ..., block_size: _Optional[int] = ..., change_id: _Optional[str] = ..., job_id: _Optional[str] = ..., verified_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., blocks_read: _Optional[int] = ..., block_count: _Optional[int] = ..., checked_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., check_job_id: _Optional[str] = ..., check_outcome: _Optional[str] = ..., check_digest: _Optional[str] = ..., mismatched: _Optional[_Iterable[_Union[BlockRange, _Mapping]]] = ..., source_blocks_compared: _Optional[int] = ...) -> None: ...

class BlockRange(_message.Message):
    __slots__ = ("first", "count")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    first: int
    count: int
    def __init__(self, first: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class VmContext(_message.Message):
    __slots__ = ("id", "appliance_id", "vcenter", "datacenter", "vm_uuid", "moref", "name", "num_cpus", "memory_mib", "guest_os", "firmware", "nics", "disks", "status", "active_job_id", "last_completed_job_id", "created_at", "updated_at", "rpo")
    ID_FIELD_NUMBER: _ClassVar[int]
    APPLIANCE_ID_FIELD_NUMBER: _ClassVar[int]
    VCENTER_FIELD_NUMBER: _ClassVar[int]
    DATACENTER_FIELD_NUMBER: _ClassVar[int]
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    MOREF_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    GUEST_OS_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_COMPLETED_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    RPO_FIELD_NUMBER: _ClassVar[int]
    id: str
    appliance_id: str
    vcenter: str
    datacenter: str
    vm_uuid: str
    moref: str
    name: str
    num_cpus: int
    memory_mib: int
    guest_os: str
    firmware: _inventory_pb2.Firmware
    nics: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.Nic]
    disks: _containers.RepeatedCompositeFieldContainer[Disk]
    status: VmContextStatus
    active_job_id: str
    last_completed_job_id: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    rpo: _schedule_pb2.VmRpo
    def __init__(self, id: _Optional[str] = ..., appliance_id: _Optional[str] = ..., vcenter: _Optional[str] = ..., datacenter: _Optional[str] = ..., vm_uuid: _Optional[str] = ..., moref: _Optional[str] = ..., name: _Optional[str] = ..., num_cpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., guest_os: _Optional[str] = ..., firmware: _Optional[_Union[_inventory_pb2.Firmware, str]] = ..., nics: _Optional[_Iterable[_Union[_inventory_pb2.Nic, _Mapping]]] = ..., disks: _Optional[_Iterable[_Union[Disk, _Mapping]]] = ..., status: _Optional[_Union[VmContextStatus, str]] = ..., active_job_id: _Optional[str] = ..., last_completed_job_id: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., rpo: _Optional[_Union[_schedule_pb2.VmRpo, _Mapping]] = ...) -> None: ...

class RegisterVmContextRequest(_message.Message):
    __slots__ = ("appliance_id", "virtual_machine", "request_id")
    APPLIANCE_ID_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    appliance_id: str
    virtual_machine: _inventory_pb2.VirtualMachine
    request_id: str
    def __init__(self, appliance_id: _Optional[str] = ..., virtual_machine: _Optional[_Union[_inventory_pb2.VirtualMachine, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RegisterVmContextResponse(_message.Message):
    __slots__ = ("vm_context", "created")
    VM_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    vm_context: VmContext
    created: bool
    def __init__(self, vm_context: _Optional[_Union[VmContext, _Mapping]] = ..., created: bool = ...) -> None: ...

class DiscoverVmsRequest(_message.Message):
    __slots__ = ("appliance_id", "name_filter", "register", "timeout_seconds", "request_id")
    APPLIANCE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FILTER_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    appliance_id: str
    name_filter: str
    register: bool
    timeout_seconds: int
    request_id: str
    def __init__(self, appliance_id: _Optional[str] = ..., name_filter: _Optional[str] = ..., register: bool = ..., timeout_seconds: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DiscoverVmsResponse(_message.Message):
    __slots__ = ("virtual_machines", "vm_contexts")
    VIRTUAL_MACHINES_FIELD_NUMBER: _ClassVar[int]
    VM_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    virtual_machines: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.VirtualMachine]
    vm_contexts: _containers.RepeatedCompositeFieldContainer[VmContext]
    def __init__(self, virtual_machines: _Optional[_Iterable[_Union[_inventory_pb2.VirtualMachine, _Mapping]]] = ..., vm_contexts: _Optional[_Iterable[_Union[VmContext, _Mapping]]] = ...) -> None: ...

class GetVmContextRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetVmContextResponse(_message.Message):
    __slots__ = ("vm_context",)
    VM_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    vm_context: VmContext
    def __init__(self, vm_context: _Optional[_Union[VmContext, _Mapping]] = ...) -> None: ...

class ListVmContextsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "appliance_id", "status")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    APPLIANCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    appliance_id: str
    status: VmContextStatus
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., appliance_id: _Optional[str] = ..., status: _Optional[_Union[VmContextStatus, str]] = ...) -> None: ...

class ListVmContextsResponse(_message.Message):
    __slots__ = ("vm_contexts", "next_page_token")
    VM_CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vm_contexts: _containers.RepeatedCompositeFieldContainer[VmContext]
    next_page_token: str
    def __init__(self, vm_contexts: _Optional[_Iterable[_Union[VmContext, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PowerOnSourceVmRequest(_message.Message):
    __slots__ = ("vm_context_id", "request_id")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    request_id: str
    def __init__(self, vm_context_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PowerOnSourceVmResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _failover_pb2.FailoverJob
    def __init__(self, job: _Optional[_Union[_failover_pb2.FailoverJob, _Mapping]] = ...) -> None: ...

class PowerOffSourceVmRequest(_message.Message):
    __slots__ = ("vm_context_id", "request_id")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    request_id: str
    def __init__(self, vm_context_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PowerOffSourceVmResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _failover_pb2.FailoverJob
    def __init__(self, job: _Optional[_Union[_failover_pb2.FailoverJob, _Mapping]] = ...) -> None: ...

class VerifyVmContextRequest(_message.Message):
    __slots__ = ("vm_context_id", "request_id")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    request_id: str
    def __init__(self, vm_context_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class VerifyVmContextResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _failover_pb2.FailoverJob
    def __init__(self, job: _Optional[_Union[_failover_pb2.FailoverJob, _Mapping]] = ...) -> None: ...

class DeleteVmContextRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteVmContextResponse(_message.Message):
    __slots__ = ("vm_context_id", "deleted_volume_ids", "removed_export_names")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_VOLUME_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_EXPORT_NAMES_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    deleted_volume_ids: _containers.RepeatedScalarFieldContainer[str]
    removed_export_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vm_context_id: _Optional[str] = ..., deleted_volume_ids: _Optional[_Iterable[str]] = ..., removed_export_names: _Optional[_Iterable[str]] = ...) -> None: ...

class CompleteMigrationRequest(_message.Message):
    __slots__ = ("vm_context_id", "request_id")
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_context_id: str
    request_id: str
    def __init__(self, vm_context_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CompleteMigrationResponse(_message.Message):
    __slots__ = ("vm_context", "target_vm_id", "kept_volume_ids", "removed_export_names", "release_command_id")
    VM_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TARGET_VM_ID_FIELD_NUMBER: _ClassVar[int]
    KEPT_VOLUME_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_EXPORT_NAMES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    vm_context: VmContext
    target_vm_id: str
    kept_volume_ids: _containers.RepeatedScalarFieldContainer[str]
    removed_export_names: _containers.RepeatedScalarFieldContainer[str]
    release_command_id: str
    def __init__(self, vm_context: _Optional[_Union[VmContext, _Mapping]] = ..., target_vm_id: _Optional[str] = ..., kept_volume_ids: _Optional[_Iterable[str]] = ..., removed_export_names: _Optional[_Iterable[str]] = ..., release_command_id: _Optional[str] = ...) -> None: ...
