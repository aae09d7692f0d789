from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Firmware(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIRMWARE_UNSPECIFIED: _ClassVar[Firmware]
    FIRMWARE_BIOS: _ClassVar[Firmware]
    FIRMWARE_EFI: _ClassVar[Firmware]

class PowerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_STATE_UNSPECIFIED: _ClassVar[PowerState]
    POWER_STATE_POWERED_ON: _ClassVar[PowerState]
    POWER_STATE_POWERED_OFF: _ClassVar[PowerState]
    POWER_STATE_SUSPENDED: _ClassVar[PowerState]
FIRMWARE_UNSPECIFIED: Firmware
FIRMWARE_BIOS: Firmware
FIRMWARE_EFI: Firmware
POWER_STATE_UNSPECIFIED: PowerState
POWER_STATE_POWERED_ON: PowerState
POWER_STATE_POWERED_OFF: PowerState
POWER_STATE_SUSPENDED: PowerState

class Nic(_message.Message):
    __slots__ = ("label", "network_name", "mac_address", "adapter_type")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_TYPE_FIELD_NUMBER: _ClassVar[int]
    label: str
    network_name: str
    mac_address: str
    adapter_type: str
    def __init__(self, label: _Optional[str] = ..., network_name: _Optional[str] = ..., mac_address: _Optional[str] = ..., adapter_type: _Optional[str] = ...) -> None: ...

class VirtualDisk(_message.Message):
    __slots__ = ("key", "label", "capacity_bytes", "datastore_path", "cbt_enabled", "current_change_id", "unit_number")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATASTORE_PATH_FIELD_NUMBER: _ClassVar[int]
    CBT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    key: int
    label: str
    capacity_bytes: int
    datastore_path: str
    cbt_enabled: bool
    current_change_id: str
    unit_number: int
    def __init__(self, key: _Optional[int] = ..., label: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., datastore_path: _Optional[str] = ..., cbt_enabled: bool = ..., current_change_id: _Optional[str] = ..., unit_number: _Optional[int] = ...) -> None: ...

class VirtualMachine(_message.Message):
    __slots__ = ("vcenter", "datacenter", "uuid", "moref", "name", "num_cpus", "memory_mib", "guest_os", "firmware", "nics", "disks", "power_state")
    VCENTER_FIELD_NUMBER: _ClassVar[int]
    DATACENTER_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MOREF_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    GUEST_OS_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    POWER_STATE_FIELD_NUMBER: _ClassVar[int]
    vcenter: str
    datacenter: str
    uuid: str
    moref: str
    name: str
    num_cpus: int
    memory_mib: int
    guest_os: str
    firmware: Firmware
    nics: _containers.RepeatedCompositeFieldContainer[Nic]
    disks: _containers.RepeatedCompositeFieldContainer[VirtualDisk]
    power_state: PowerState
    def __init__(self, vcenter: _Optional[str] = ..., datacenter: _Optional[str] = ..., uuid: _Optional[str] = ..., moref: _Optional[str] = ..., name: _Optional[str] = ..., num_cpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., guest_os: _Optional[str] = ..., firmware: _Optional[_Union[Firmware, str]] = ..., nics: _Optional[_Iterable[_Union[Nic, _Mapping]]] = ..., disks: _Optional[_Iterable[_Union[VirtualDisk, _Mapping]]] = ..., power_state: _Optional[_Union[PowerState, str]] = ...) -> None: ...

class CbtStatus(_message.Message):
    __slots__ = ("disk_key", "enabled", "current_change_id", "taken_at")
    DISK_KEY_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    TAKEN_AT_FIELD_NUMBER: _ClassVar[int]
    disk_key: int
    enabled: bool
    current_change_id: str
    taken_at: _timestamp_pb2.Timestamp
    def __init__(self, disk_key: _Optional[int] = ..., enabled: bool = ..., current_change_id: _Optional[str] = ..., taken_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
