from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CopyPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COPY_PHASE_UNSPECIFIED: _ClassVar[CopyPhase]
    COPY_PHASE_PREPARING: _ClassVar[CopyPhase]
    COPY_PHASE_SNAPSHOTTING: _ClassVar[CopyPhase]
    COPY_PHASE_QUERYING_CHANGES: _ClassVar[CopyPhase]
    COPY_PHASE_COPYING: _ClassVar[CopyPhase]
    COPY_PHASE_FINALIZING: _ClassVar[CopyPhase]
    COPY_PHASE_DONE: _ClassVar[CopyPhase]

class CopyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COPY_MODE_UNSPECIFIED: _ClassVar[CopyMode]
    COPY_MODE_FULL: _ClassVar[CopyMode]
    COPY_MODE_INCREMENTAL: _ClassVar[CopyMode]

class ErrorClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CLASS_UNSPECIFIED: _ClassVar[ErrorClass]
    ERROR_CLASS_SOURCE_UNAVAILABLE: _ClassVar[ErrorClass]
    ERROR_CLASS_SNAPSHOT_FAILED: _ClassVar[ErrorClass]
    ERROR_CLASS_CHANGE_ID_INVALID: _ClassVar[ErrorClass]
    ERROR_CLASS_TARGET_UNREACHABLE: _ClassVar[ErrorClass]
    ERROR_CLASS_TARGET_WRITE_FAILED: _ClassVar[ErrorClass]
    ERROR_CLASS_DISK_RESIZED: _ClassVar[ErrorClass]
    ERROR_CLASS_INVALID_COMMAND: _ClassVar[ErrorClass]
    ERROR_CLASS_INTERNAL: _ClassVar[ErrorClass]
COPY_PHASE_UNSPECIFIED: CopyPhase
COPY_PHASE_PREPARING: CopyPhase
COPY_PHASE_SNAPSHOTTING: CopyPhase
COPY_PHASE_QUERYING_CHANGES: CopyPhase
COPY_PHASE_COPYING: CopyPhase
COPY_PHASE_FINALIZING: CopyPhase
COPY_PHASE_DONE: CopyPhase
COPY_MODE_UNSPECIFIED: CopyMode
COPY_MODE_FULL: CopyMode
COPY_MODE_INCREMENTAL: CopyMode
ERROR_CLASS_UNSPECIFIED: ErrorClass
ERROR_CLASS_SOURCE_UNAVAILABLE: ErrorClass
ERROR_CLASS_SNAPSHOT_FAILED: ErrorClass
ERROR_CLASS_CHANGE_ID_INVALID: ErrorClass
ERROR_CLASS_TARGET_UNREACHABLE: ErrorClass
ERROR_CLASS_TARGET_WRITE_FAILED: ErrorClass
ERROR_CLASS_DISK_RESIZED: ErrorClass
ERROR_CLASS_INVALID_COMMAND: ErrorClass
ERROR_CLASS_INTERNAL: ErrorClass

class JobError(_message.Message):
    __slots__ = ("reason", "message", "error_class")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    error_class: ErrorClass
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., error_class: _Optional[_Union[ErrorClass, str]] = ...) -> None: ...
