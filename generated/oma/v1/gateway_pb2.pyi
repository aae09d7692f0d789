from vma.v1 import stream_pb2 as _stream_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "progress", "event", "command_result", "heartbeat")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_RESULT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    hello: _stream_pb2.Hello
    progress: _stream_pb2.ProgressReport
    event: _stream_pb2.JobEvent
    command_result: _stream_pb2.CommandResult
    heartbeat: _stream_pb2.Heartbeat
    def __init__(self, hello: _Optional[_Union[_stream_pb2.Hello, _Mapping]] = ..., progress: _Optional[_Union[_stream_pb2.ProgressReport, _Mapping]] = ..., event: _Optional[_Union[_stream_pb2.JobEvent, _Mapping]] = ..., command_result: _Optional[_Union[_stream_pb2.CommandResult, _Mapping]] = ..., heartbeat: _Optional[_Union[_stream_pb2.Heartbeat, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "ack", "command", "command_result_ack", "error")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    COMMAND_RESULT_ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    welcome: _stream_pb2.Welcome
    ack: _stream_pb2.JobAck
    command: _stream_pb2.Command
    command_result_ack: _stream_pb2.CommandResultAck
    error: _stream_pb2.StreamError
    def __init__(self, welcome: _Optional[_Union[_stream_pb2.Welcome, _Mapping]] = ..., ack: _Optional[_Union[_stream_pb2.JobAck, _Mapping]] = ..., command: _Optional[_Union[_stream_pb2.Command, _Mapping]] = ..., command_result_ack: _Optional[_Union[_stream_pb2.CommandResultAck, _Mapping]] = ..., error: _Optional[_Union[_stream_pb2.StreamError, _Mapping]] = ...) -> None: ...
