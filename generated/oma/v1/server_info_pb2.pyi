from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("version", "database_kind", "cloudstack_kind", "started_at", "schema_version", "process_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATABASE_KIND_FIELD_NUMBER: _ClassVar[int]
    CLOUDSTACK_KIND_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROCESS_ID_FIELD_NUMBER: _ClassVar[int]
    version: str
    database_kind: str
    cloudstack_kind: str
    started_at: _timestamp_pb2.Timestamp
    schema_version: int
    process_id: str
    def __init__(self, version: _Optional[str] = ..., database_kind: _Optional[str] = ..., cloudstack_kind: _Optional[str] = ..., started_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., schema_version: _Optional[int] = ..., process_id: _Optional[str] = ...) -> None: ...
