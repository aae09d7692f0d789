from google.protobuf import timestamp_pb2 as _timestamp_pb2
from oma.v1 import appliance_pb2 as _appliance_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinApplianceRequest(_message.Message):
    __slots__ = ("join_token", "csr_pem")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    csr_pem: str
    def __init__(self, join_token: _Optional[str] = ..., csr_pem: _Optional[str] = ...) -> None: ...

class JoinApplianceResponse(_message.Message):
    __slots__ = ("appliance", "certificate_pem", "ca_pem", "expires_at", "appliance_endpoint")
    APPLIANCE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    APPLIANCE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    appliance: _appliance_pb2.Appliance
    certificate_pem: str
    ca_pem: str
    expires_at: _timestamp_pb2.Timestamp
    appliance_endpoint: str
    def __init__(self, appliance: _Optional[_Union[_appliance_pb2.Appliance, _Mapping]] = ..., certificate_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., appliance_endpoint: _Optional[str] = ...) -> None: ...

class RenewApplianceCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class RenewApplianceCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem", "expires_at")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, certificate_pem: _Optional[str] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConfirmApplianceCertificateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConfirmApplianceCertificateResponse(_message.Message):
    __slots__ = ("serial", "superseded_serials")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_SERIALS_FIELD_NUMBER: _ClassVar[int]
    serial: str
    superseded_serials: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, serial: _Optional[str] = ..., superseded_serials: _Optional[_Iterable[str]] = ...) -> None: ...
