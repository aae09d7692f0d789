from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplianceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPLIANCE_STATUS_UNSPECIFIED: _ClassVar[ApplianceStatus]
    APPLIANCE_STATUS_ACTIVE: _ClassVar[ApplianceStatus]
    APPLIANCE_STATUS_REVOKED: _ClassVar[ApplianceStatus]

class ConnectionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTION_STATE_UNSPECIFIED: _ClassVar[ConnectionState]
    CONNECTION_STATE_NEVER_CONNECTED: _ClassVar[ConnectionState]
    CONNECTION_STATE_CONNECTED: _ClassVar[ConnectionState]
    CONNECTION_STATE_DISCONNECTED: _ClassVar[ConnectionState]
APPLIANCE_STATUS_UNSPECIFIED: ApplianceStatus
APPLIANCE_STATUS_ACTIVE: ApplianceStatus
APPLIANCE_STATUS_REVOKED: ApplianceStatus
CONNECTION_STATE_UNSPECIFIED: ConnectionState
CONNECTION_STATE_NEVER_CONNECTED: ConnectionState
CONNECTION_STATE_CONNECTED: ConnectionState
CONNECTION_STATE_DISCONNECTED: ConnectionState

class Appliance(_message.Message):
    __slots__ = ("id", "name", "status", "connection_state", "agent_version", "capabilities", "last_seen_at", "created_at", "connected_to", "session_id", "certificate_serial", "certificate_expires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_STATE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_TO_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: ApplianceStatus
    connection_state: ConnectionState
    agent_version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    last_seen_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    connected_to: str
    session_id: str
    certificate_serial: str
    certificate_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[ApplianceStatus, str]] = ..., connection_state: _Optional[_Union[ConnectionState, str]] = ..., agent_version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., last_seen_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., connected_to: _Optional[str] = ..., session_id: _Optional[str] = ..., certificate_serial: _Optional[str] = ..., certificate_expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EnrollApplianceRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class EnrollApplianceResponse(_message.Message):
    __slots__ = ("appliance", "credential", "join_token", "join_token_expires_at", "ca_fingerprint")
    APPLIANCE_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    appliance: Appliance
    credential: str
    join_token: str
    join_token_expires_at: _timestamp_pb2.Timestamp
    ca_fingerprint: str
    def __init__(self, appliance: _Optional[_Union[Appliance, _Mapping]] = ..., credential: _Optional[str] = ..., join_token: _Optional[str] = ..., join_token_expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., ca_fingerprint: _Optional[str] = ...) -> None: ...

class GetApplianceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetApplianceResponse(_message.Message):
    __slots__ = ("appliance",)
    APPLIANCE_FIELD_NUMBER: _ClassVar[int]
    appliance: Appliance
    def __init__(self, appliance: _Optional[_Union[Appliance, _Mapping]] = ...) -> None: ...

class ListAppliancesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "connection_state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    connection_state: ConnectionState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., connection_state: _Optional[_Union[ConnectionState, str]] = ...) -> None: ...

class ListAppliancesResponse(_message.Message):
    __slots__ = ("appliances", "next_page_token")
    APPLIANCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    appliances: _containers.RepeatedCompositeFieldContainer[Appliance]
    next_page_token: str
    def __init__(self, appliances: _Optional[_Iterable[_Union[Appliance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeApplianceRequest(_message.Message):
    __slots__ = ("id", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RevokeApplianceResponse(_message.Message):
    __slots__ = ("appliance",)
    APPLIANCE_FIELD_NUMBER: _ClassVar[int]
    appliance: Appliance
    def __init__(self, appliance: _Optional[_Union[Appliance, _Mapping]] = ...) -> None: ...
