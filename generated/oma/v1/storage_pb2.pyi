from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VolumeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOLUME_STATE_UNSPECIFIED: _ClassVar[VolumeState]
    VOLUME_STATE_CREATING: _ClassVar[VolumeState]
    VOLUME_STATE_DETACHED: _ClassVar[VolumeState]
    VOLUME_STATE_ATTACHED_TO_OMA: _ClassVar[VolumeState]
    VOLUME_STATE_ATTACHED_TO_TARGET: _ClassVar[VolumeState]
    VOLUME_STATE_DELETING: _ClassVar[VolumeState]
    VOLUME_STATE_DELETED: _ClassVar[VolumeState]
    VOLUME_STATE_ERROR: _ClassVar[VolumeState]

class NbdExportState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NBD_EXPORT_STATE_UNSPECIFIED: _ClassVar[NbdExportState]
    NBD_EXPORT_STATE_PENDING: _ClassVar[NbdExportState]
    NBD_EXPORT_STATE_ACTIVE: _ClassVar[NbdExportState]
    NBD_EXPORT_STATE_REMOVING: _ClassVar[NbdExportState]
    NBD_EXPORT_STATE_REMOVED: _ClassVar[NbdExportState]
    NBD_EXPORT_STATE_ERROR: _ClassVar[NbdExportState]
VOLUME_STATE_UNSPECIFIED: VolumeState
VOLUME_STATE_CREATING: VolumeState
VOLUME_STATE_DETACHED: VolumeState
VOLUME_STATE_ATTACHED_TO_OMA: VolumeState
VOLUME_STATE_ATTACHED_TO_TARGET: VolumeState
VOLUME_STATE_DELETING: VolumeState
VOLUME_STATE_DELETED: VolumeState
VOLUME_STATE_ERROR: VolumeState
NBD_EXPORT_STATE_UNSPECIFIED: NbdExportState
NBD_EXPORT_STATE_PENDING: NbdExportState
NBD_EXPORT_STATE_ACTIVE: NbdExportState
NBD_EXPORT_STATE_REMOVING: NbdExportState
NBD_EXPORT_STATE_REMOVED: NbdExportState
NBD_EXPORT_STATE_ERROR: NbdExportState

class Volume(_message.Message):
    __slots__ = ("id", "cloudstack_id", "disk_id", "name", "size_bytes", "state", "attached_vm_id", "device_id", "device_path", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLOUDSTACK_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_VM_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_PATH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    cloudstack_id: str
    disk_id: str
    name: str
    size_bytes: int
    state: VolumeState
    attached_vm_id: str
    device_id: int
    device_path: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., cloudstack_id: _Optional[str] = ..., disk_id: _Optional[str] = ..., name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., state: _Optional[_Union[VolumeState, str]] = ..., attached_vm_id: _Optional[str] = ..., device_id: _Optional[int] = ..., device_path: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class NbdExport(_message.Message):
    __slots__ = ("name", "volume_id", "disk_id", "device_path", "address", "uri", "state", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    DISK_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_PATH_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    volume_id: str
    disk_id: str
    device_path: str
    address: str
    uri: str
    state: NbdExportState
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., volume_id: _Optional[str] = ..., disk_id: _Optional[str] = ..., device_path: _Optional[str] = ..., address: _Optional[str] = ..., uri: _Optional[str] = ..., state: _Optional[_Union[NbdExportState, str]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetVolumeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetVolumeResponse(_message.Message):
    __slots__ = ("volume",)
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    volume: Volume
    def __init__(self, volume: _Optional[_Union[Volume, _Mapping]] = ...) -> None: ...

class ListVolumesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "vm_context_id", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VM_CONTEXT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    vm_context_id: str
    state: VolumeState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., vm_context_id: _Optional[str] = ..., state: _Optional[_Union[VolumeState, str]] = ...) -> None: ...

class ListVolumesResponse(_message.Message):
    __slots__ = ("volumes", "next_page_token")
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    volumes: _containers.RepeatedCompositeFieldContainer[Volume]
    next_page_token: str
    def __init__(self, volumes: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetNbdExportRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetNbdExportResponse(_message.Message):
    __slots__ = ("nbd_export",)
    NBD_EXPORT_FIELD_NUMBER: _ClassVar[int]
    nbd_export: NbdExport
    def __init__(self, nbd_export: _Optional[_Union[NbdExport, _Mapping]] = ...) -> None: ...

class ListNbdExportsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: NbdExportState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[NbdExportState, str]] = ...) -> None: ...

class ListNbdExportsResponse(_message.Message):
    __slots__ = ("nbd_exports", "next_page_token")
    NBD_EXPORTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    nbd_exports: _containers.RepeatedCompositeFieldContainer[NbdExport]
    next_page_token: str
    def __init__(self, nbd_exports: _Optional[_Iterable[_Union[NbdExport, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
