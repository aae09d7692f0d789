from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from oma.common.v1 import inventory_pb2 as _inventory_pb2
from oma.common.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CommandOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_OUTCOME_UNSPECIFIED: _ClassVar[CommandOutcome]
    COMMAND_OUTCOME_SUCCEEDED: _ClassVar[CommandOutcome]
    COMMAND_OUTCOME_FAILED: _ClassVar[CommandOutcome]
    COMMAND_OUTCOME_REJECTED: _ClassVar[CommandOutcome]

class StreamErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_ERROR_CODE_UNSPECIFIED: _ClassVar[StreamErrorCode]
    STREAM_ERROR_CODE_UNKNOWN_JOB: _ClassVar[StreamErrorCode]
    STREAM_ERROR_CODE_FOREIGN_JOB: _ClassVar[StreamErrorCode]
    STREAM_ERROR_CODE_INVALID_MESSAGE: _ClassVar[StreamErrorCode]
    STREAM_ERROR_CODE_INVALID_STATE: _ClassVar[StreamErrorCode]
    STREAM_ERROR_CODE_UNKNOWN_COMMAND: _ClassVar[StreamErrorCode]
COMMAND_OUTCOME_UNSPECIFIED: CommandOutcome
COMMAND_OUTCOME_SUCCEEDED: CommandOutcome
COMMAND_OUTCOME_FAILED: CommandOutcome
COMMAND_OUTCOME_REJECTED: CommandOutcome
STREAM_ERROR_CODE_UNSPECIFIED: StreamErrorCode
STREAM_ERROR_CODE_UNKNOWN_JOB: StreamErrorCode
STREAM_ERROR_CODE_FOREIGN_JOB: StreamErrorCode
STREAM_ERROR_CODE_INVALID_MESSAGE: StreamErrorCode
STREAM_ERROR_CODE_INVALID_STATE: StreamErrorCode
STREAM_ERROR_CODE_UNKNOWN_COMMAND: StreamErrorCode

class Hello(_message.Message):
    __slots__ = ("appliance_id", "credential", "agent_version", "capabilities", "last_command_id")
    APPLIANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    appliance_id: str
    credential: str
    agent_version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    last_command_id: str
    def __init__(self, appliance_id: _Optional[str] = ..., credential: _Optional[str] = ..., agent_version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., last_command_id: _Optional[str] = ...) -> None: ...

class JobCursor(_message.Message):
    __slots__ = ("job_id", "last_applied_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    last_applied_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., last_applied_sequence: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval", "server_version", "open_jobs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPEN_JOBS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval: _duration_pb2.Duration
    server_version: str
    open_jobs: _containers.RepeatedCompositeFieldContainer[JobCursor]
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., server_version: _Optional[str] = ..., open_jobs: _Optional[_Iterable[_Union[JobCursor, _Mapping]]] = ...) -> None: ...

class DiskProgress(_message.Message):
    __slots__ = ("disk_id", "bytes_done", "bytes_total", "throughput_bytes_per_second", "phase", "mode", "resume_token")
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    disk_id: str
    bytes_done: int
    bytes_total: int
    throughput_bytes_per_second: int
    phase: _jobs_pb2.CopyPhase
    mode: _jobs_pb2.CopyMode
    resume_token: str
    def __init__(self, disk_id: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., throughput_bytes_per_second: _Optional[int] = ..., phase: _Optional[_Union[_jobs_pb2.CopyPhase, str]] = ..., mode: _Optional[_Union[_jobs_pb2.CopyMode, str]] = ..., resume_token: _Optional[str] = ...) -> None: ...

class ProgressReport(_message.Message):
    __slots__ = ("job_id", "sequence", "phase", "current_operation", "bytes_done", "bytes_total", "throughput_bytes_per_second", "eta", "disks", "sent_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_OPERATION_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    phase: _jobs_pb2.CopyPhase
    current_operation: str
    bytes_done: int
    bytes_total: int
    throughput_bytes_per_second: int
    eta: _duration_pb2.Duration
    disks: _containers.RepeatedCompositeFieldContainer[DiskProgress]
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., phase: _Optional[_Union[_jobs_pb2.CopyPhase, str]] = ..., current_operation: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., throughput_bytes_per_second: _Optional[int] = ..., eta: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., disks: _Optional[_Iterable[_Union[DiskProgress, _Mapping]]] = ..., sent_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class JobStarted(_message.Message):
    __slots__ = ("source_snapshot",)
    SOURCE_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    source_snapshot: str
    def __init__(self, source_snapshot: _Optional[str] = ...) -> None: ...

class DiskCompleted(_message.Message):
    __slots__ = ("disk_id", "change_id", "bytes_copied", "mode", "copied")
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    COPIED_FIELD_NUMBER: _ClassVar[int]
    disk_id: str
    change_id: str
    bytes_copied: int
    mode: _jobs_pb2.CopyMode
    copied: CopiedExtents
    def __init__(self, disk_id: _Optional[str] = ..., change_id: _Optional[str] = ..., bytes_copied: _Optional[int] = ..., mode: _Optional[_Union[_jobs_pb2.CopyMode, str]] = ..., copied: _Optional[_Union[CopiedExtents, _Mapping]] = ...) -> None: ...

class ByteExtent(_message.Message):
    __slots__ = ("offset", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class CopiedExtents(_message.Message):
    __slots__ = ("extents",)
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    extents: _containers.RepeatedCompositeFieldContainer[ByteExtent]
    def __init__(self, extents: _Optional[_Iterable[_Union[ByteExtent, _Mapping]]] = ...) -> None: ...

class BlockHashes(_message.Message):
    __slots__ = ("disk_id", "algorithm", "block_size", "runs", "pieces")
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    disk_id: str
    algorithm: str
    block_size: int
    runs: _containers.RepeatedCompositeFieldContainer[BlockHashRun]
    pieces: _containers.RepeatedCompositeFieldContainer[PieceHash]
    def __init__(self, disk_id: _Optional[str] = ..., algorithm: _Optional[str] = ..., block_size: _Optional[int] = ..., runs: _Optional[_Iterable[_Union[BlockHashRun, _Mapping]]] = ..., pieces: _Optional[_Iterable[_Union[PieceHash, _Mapping]]] = ...) -> None: ...

class PieceHash(_message.Message):
    __slots__ = ("offset", "length", "hash")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    hash: bytes
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ..., hash: _Optional[bytes] = ...) -> None: ...

class BlockHashRun(_message.Message):
    __slots__ = ("first_block", "count", "hashes")
    FIRST_BLOCK_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    first_block: int
    count: int
    hashes: bytes
    def __init__(self, first_block: _Optional[int] = ..., count: _Optional[int] = ..., hashes: _Optional[bytes] = ...) -> None: ...

class JobCompleted(_message.Message):
    __slots__ = ("bytes_copied",)
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    bytes_copied: int
    def __init__(self, bytes_copied: _Optional[int] = ...) -> None: ...

class JobFailed(_message.Message):
    __slots__ = ("error_class", "detail", "disk_id")
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    error_class: _jobs_pb2.ErrorClass
    detail: str
    disk_id: str
    def __init__(self, error_class: _Optional[_Union[_jobs_pb2.ErrorClass, str]] = ..., detail: _Optional[str] = ..., disk_id: _Optional[str] = ...) -> None: ...

class JobCancelled(_message.Message):
    __slots__ = ("detail",)
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    detail: str
    def __init__(self, detail: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "occurred_at", "started", "disk_completed", "completed", "failed", "cancelled", "block_hashes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    DISK_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    occurred_at: _timestamp_pb2.Timestamp
    started: JobStarted
    disk_completed: DiskCompleted
    completed: JobCompleted
    failed: JobFailed
    cancelled: JobCancelled
    block_hashes: BlockHashes
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., occurred_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., started: _Optional[_Union[JobStarted, _Mapping]] = ..., disk_completed: _Optional[_Union[DiskCompleted, _Mapping]] = ..., completed: _Optional[_Union[JobCompleted, _Mapping]] = ..., failed: _Optional[_Union[JobFailed, _Mapping]] = ..., cancelled: _Optional[_Union[JobCancelled, _Mapping]] = ..., block_hashes: _Optional[_Union[BlockHashes, _Mapping]] = ...) -> None: ...

class DiscoveryResult(_message.Message):
    __slots__ = ("virtual_machines",)
    VIRTUAL_MACHINES_FIELD_NUMBER: _ClassVar[int]
    virtual_machines: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.VirtualMachine]
    def __init__(self, virtual_machines: _Optional[_Iterable[_Union[_inventory_pb2.VirtualMachine, _Mapping]]] = ...) -> None: ...

class PowerResult(_message.Message):
    __slots__ = ("power_state",)
    POWER_STATE_FIELD_NUMBER: _ClassVar[int]
    power_state: _inventory_pb2.PowerState
    def __init__(self, power_state: _Optional[_Union[_inventory_pb2.PowerState, str]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "outcome", "detail", "error_class", "discovery", "power")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    outcome: CommandOutcome
    detail: str
    error_class: _jobs_pb2.ErrorClass
    discovery: DiscoveryResult
    power: PowerResult
    def __init__(self, command_id: _Optional[str] = ..., outcome: _Optional[_Union[CommandOutcome, str]] = ..., detail: _Optional[str] = ..., error_class: _Optional[_Union[_jobs_pb2.ErrorClass, str]] = ..., discovery: _Optional[_Union[DiscoveryResult, _Mapping]] = ..., power: _Optional[_Union[PowerResult, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at", "running_job_ids")
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    sent_at: _timestamp_pb2.Timestamp
    running_job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sent_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., running_job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DiskTarget(_message.Message):
    __slots__ = ("disk_id", "disk_key", "nbd_uri", "previous_change_id", "capacity_bytes", "resume_token", "target_is_new", "repair_extents")
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_KEY_FIELD_NUMBER: _ClassVar[int]
    NBD_URI_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TARGET_IS_NEW_FIELD_NUMBER: _ClassVar[int]
    REPAIR_EXTENTS_FIELD_NUMBER: _ClassVar[int]
    disk_id: str
    disk_key: int
    nbd_uri: str
    previous_change_id: str
    capacity_bytes: int
    resume_token: str
    target_is_new: bool
    repair_extents: CopiedExtents
    def __init__(self, disk_id: _Optional[str] = ..., disk_key: _Optional[int] = ..., nbd_uri: _Optional[str] = ..., previous_change_id: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., resume_token: _Optional[str] = ..., target_is_new: bool = ..., repair_extents: _Optional[_Union[CopiedExtents, _Mapping]] = ...) -> None: ...

class StartReplicationCommand(_message.Message):
    __slots__ = ("job_id", "vm_uuid", "disks", "last_applied_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    vm_uuid: str
    disks: _containers.RepeatedCompositeFieldContainer[DiskTarget]
    last_applied_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., vm_uuid: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[DiskTarget, _Mapping]]] = ..., last_applied_sequence: _Optional[int] = ...) -> None: ...

class CancelJobCommand(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class PowerOffCommand(_message.Message):
    __slots__ = ("vm_uuid", "graceful_timeout")
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    GRACEFUL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    graceful_timeout: _duration_pb2.Duration
    def __init__(self, vm_uuid: _Optional[str] = ..., graceful_timeout: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PowerOnCommand(_message.Message):
    __slots__ = ("vm_uuid",)
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    def __init__(self, vm_uuid: _Optional[str] = ...) -> None: ...

class DiscoverCommand(_message.Message):
    __slots__ = ("name_filter",)
    NAME_FILTER_FIELD_NUMBER: _ClassVar[int]
    name_filter: str
    def __init__(self, name_filter: _Optional[str] = ...) -> None: ...

class ReleaseSourceCommand(_message.Message):
    __slots__ = ("vm_uuid",)
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    def __init__(self, vm_uuid: _Optional[str] = ...) -> None: ...

class SetBandwidthLimitCommand(_message.Message):
    __slots__ = ("appliance_bytes_per_second", "job_bytes_per_second")
    class JobBytesPerSecondEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    APPLIANCE_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    JOB_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    appliance_bytes_per_second: int
    job_bytes_per_second: _containers.ScalarMap[str, int]
    def __init__(self, appliance_bytes_per_second: _Optional[int] = ..., job_bytes_per_second: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "issued_at", "start_replication", "cancel_job", "power_off", "power_on", "discover", "release_source", "set_bandwidth_limit")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    START_REPLICATION_FIELD_NUMBER: _ClassVar[int]
    CANCEL_JOB_FIELD_NUMBER: _ClassVar[int]
    POWER_OFF_FIELD_NUMBER: _ClassVar[int]
    POWER_ON_FIELD_NUMBER: _ClassVar[int]
    DISCOVER_FIELD_NUMBER: _ClassVar[int]
    RELEASE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SET_BANDWIDTH_LIMIT_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    issued_at: _timestamp_pb2.Timestamp
    start_replication: StartReplicationCommand
    cancel_job: CancelJobCommand
    power_off: PowerOffCommand
    power_on: PowerOnCommand
    discover: DiscoverCommand
    release_source: ReleaseSourceCommand
    set_bandwidth_limit: SetBandwidthLimitCommand
    def __init__(self, command_id: _Optional[str] = ..., issued_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., start_replication: _Optional[_Union[StartReplicationCommand, _Mapping]] = ..., cancel_job: _Optional[_Union[CancelJobCommand, _Mapping]] = ..., power_off: _Optional[_Union[PowerOffCommand, _Mapping]] = ..., power_on: _Optional[_Union[PowerOnCommand, _Mapping]] = ..., discover: _Optional[_Union[DiscoverCommand, _Mapping]] = ..., release_source: _Optional[_Union[ReleaseSourceCommand, _Mapping]] = ..., set_bandwidth_limit: _Optional[_Union[SetBandwidthLimitCommand, _Mapping]] = ...) -> None: ...

class JobAck(_message.Message):
    __slots__ = ("job_id", "sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class CommandResultAck(_message.Message):
    __slots__ = ("command_id",)
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    def __init__(self, command_id: _Optional[str] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "job_id", "sequence", "command_id", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: StreamErrorCode
    job_id: str
    sequence: int
    command_id: str
    message: str
    def __init__(self, code: _Optional[_Union[StreamErrorCode, str]] = ..., job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., command_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
