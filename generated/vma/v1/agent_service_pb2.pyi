from google.protobuf import timestamp_pb2 as _timestamp_pb2
from oma.common.v1 import inventory_pb2 as _inventory_pb2
from vma.v1 import stream_pb2 as _stream_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListVirtualMachinesRequest(_message.Message):
    __slots__ = ("name_filter",)
    NAME_FILTER_FIELD_NUMBER: _ClassVar[int]
    name_filter: str
    def __init__(self, name_filter: _Optional[str] = ...) -> None: ...

class ListVirtualMachinesResponse(_message.Message):
    __slots__ = ("virtual_machines",)
    VIRTUAL_MACHINES_FIELD_NUMBER: _ClassVar[int]
    virtual_machines: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.VirtualMachine]
    def __init__(self, virtual_machines: _Optional[_Iterable[_Union[_inventory_pb2.VirtualMachine, _Mapping]]] = ...) -> None: ...

class GetVirtualMachineRequest(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class GetVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: _inventory_pb2.VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[_inventory_pb2.VirtualMachine, _Mapping]] = ...) -> None: ...

class GetCbtStatusRequest(_message.Message):
    __slots__ = ("vm_uuid",)
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    vm_uuid: str
    def __init__(self, vm_uuid: _Optional[str] = ...) -> None: ...

class GetCbtStatusResponse(_message.Message):
    __slots__ = ("disks",)
    DISKS_FIELD_NUMBER: _ClassVar[int]
    disks: _containers.RepeatedCompositeFieldContainer[_inventory_pb2.CbtStatus]
    def __init__(self, disks: _Optional[_Iterable[_Union[_inventory_pb2.CbtStatus, _Mapping]]] = ...) -> None: ...

class LocalJob(_message.Message):
    __slots__ = ("job_id", "vm_uuid", "latest", "running", "acked_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    vm_uuid: str
    latest: _stream_pb2.ProgressReport
    running: bool
    acked_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., vm_uuid: _Optional[str] = ..., latest: _Optional[_Union[_stream_pb2.ProgressReport, _Mapping]] = ..., running: bool = ..., acked_sequence: _Optional[int] = ...) -> None: ...

class ListLocalJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLocalJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[LocalJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[LocalJob, _Mapping]]] = ...) -> None: ...

class GetAgentStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAgentStatusResponse(_message.Message):
    __slots__ = ("appliance_id", "oma_address", "connected", "session_id", "connected_since", "unacked_messages", "agent_version")
    APPLIANCE_ID_FIELD_NUMBER: _ClassVar[int]
    OMA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    UNACKED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    appliance_id: str
    oma_address: str
    connected: bool
    session_id: str
    connected_since: _timestamp_pb2.Timestamp
    unacked_messages: int
    agent_version: str
    def __init__(self, appliance_id: _Optional[str] = ..., oma_address: _Optional[str] = ..., connected: bool = ..., session_id: _Optional[str] = ..., connected_since: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., unacked_messages: _Optional[int] = ..., agent_version: _Optional[str] = ...) -> None: ...
