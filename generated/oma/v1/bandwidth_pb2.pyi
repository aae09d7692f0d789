from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BandwidthTargetKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BANDWIDTH_TARGET_KIND_UNSPECIFIED: _ClassVar[BandwidthTargetKind]
    BANDWIDTH_TARGET_KIND_APPLIANCE: _ClassVar[BandwidthTargetKind]
    BANDWIDTH_TARGET_KIND_REPLICATION_JOB: _ClassVar[BandwidthTargetKind]

class Weekday(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEEKDAY_UNSPECIFIED: _ClassVar[Weekday]
    WEEKDAY_MONDAY: _ClassVar[Weekday]
    WEEKDAY_TUESDAY: _ClassVar[Weekday]
    WEEKDAY_WEDNESDAY: _ClassVar[Weekday]
    WEEKDAY_THURSDAY: _ClassVar[Weekday]
    WEEKDAY_FRIDAY: _ClassVar[Weekday]
    WEEKDAY_SATURDAY: _ClassVar[Weekday]
    WEEKDAY_SUNDAY: _ClassVar[Weekday]
BANDWIDTH_TARGET_KIND_UNSPECIFIED: BandwidthTargetKind
BANDWIDTH_TARGET_KIND_APPLIANCE: BandwidthTargetKind
BANDWIDTH_TARGET_KIND_REPLICATION_JOB: BandwidthTargetKind
WEEKDAY_UNSPECIFIED: Weekday
WEEKDAY_MONDAY: Weekday
WEEKDAY_TUESDAY: Weekday
WEEKDAY_WEDNESDAY: Weekday
WEEKDAY_THURSDAY: Weekday
WEEKDAY_FRIDAY: Weekday
WEEKDAY_SATURDAY: Weekday
WEEKDAY_SUNDAY: Weekday

class BandwidthTarget(_message.Message):
    __slots__ = ("kind", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: BandwidthTargetKind
    id: str
    def __init__(self, kind: _Optional[_Union[BandwidthTargetKind, str]] = ..., id: _Optional[str] = ...) -> None: ...

class BandwidthWindow(_message.Message):
    __slots__ = ("days", "start", "end", "bytes_per_second")
    DAYS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    days: _containers.RepeatedScalarFieldContainer[Weekday]
    start: str
    end: str
    bytes_per_second: int
    def __init__(self, days: _Optional[_Iterable[_Union[Weekday, str]]] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., bytes_per_second: _Optional[int] = ...) -> None: ...

class BandwidthLimitSpec(_message.Message):
    __slots__ = ("target", "bytes_per_second", "windows", "time_zone")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    target: BandwidthTarget
    bytes_per_second: int
    windows: _containers.RepeatedCompositeFieldContainer[BandwidthWindow]
    time_zone: str
    def __init__(self, target: _Optional[_Union[BandwidthTarget, _Mapping]] = ..., bytes_per_second: _Optional[int] = ..., windows: _Optional[_Iterable[_Union[BandwidthWindow, _Mapping]]] = ..., time_zone: _Optional[str] = ...) -> None: ...

class BandwidthLimit(_message.Message):
    __slots__ = ("id", "spec", "current_bytes_per_second", "next_change_at", "created_at", "updated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CURRENT_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHANGE_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    spec: BandwidthLimitSpec
    current_bytes_per_second: int
    next_change_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., spec: _Optional[_Union[BandwidthLimitSpec, _Mapping]] = ..., current_bytes_per_second: _Optional[int] = ..., next_change_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetBandwidthLimitRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: BandwidthLimitSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[BandwidthLimitSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetBandwidthLimitResponse(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: BandwidthLimit
    def __init__(self, limit: _Optional[_Union[BandwidthLimit, _Mapping]] = ...) -> None: ...

class GetBandwidthLimitRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetBandwidthLimitResponse(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: BandwidthLimit
    def __init__(self, limit: _Optional[_Union[BandwidthLimit, _Mapping]] = ...) -> None: ...

class ListBandwidthLimitsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "target_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    target_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., target_id: _Optional[str] = ...) -> None: ...

class ListBandwidthLimitsResponse(_message.Message):
    __slots__ = ("limits", "next_page_token")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[BandwidthLimit]
    next_page_token: str
    def __init__(self, limits: _Optional[_Iterable[_Union[BandwidthLimit, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteBandwidthLimitRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteBandwidthLimitResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
