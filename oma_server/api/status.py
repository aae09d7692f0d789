"""The one place that turns domain errors into gRPC status with google.rpc.ErrorInfo and typed details (AIP-193).

`ErrorMappingInterceptor` wraps every handler: a request that does not decode, or whose fields break a rule of
`oma_server.api.validation`, is INVALID_ARGUMENT before the handler runs; a DomainError becomes its status code,
message and ErrorInfo; any other exception becomes INTERNAL with an error id that the log line carries too (never
the exception's text), never a crashed server or stream.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pool
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from loguru import logger

from oma_server.api.error_details import details_of
from oma_server.api.validation import RequestCheck, undecodable
from oma_server.errors import Category, DomainError, Internal, Unimplemented
from oma_server.uninterruptible import finish
from oma_server.version import __version__

ERROR_DOMAIN = "oma.control-plane"

_CODES: dict[Category, grpc.StatusCode] = {
    Category.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Category.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Category.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Category.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Category.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Category.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Category.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Category.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Category.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Category.ABORTED: grpc.StatusCode.ABORTED,
    Category.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    Category.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Category.INTERNAL: grpc.StatusCode.INTERNAL,
}


def grpc_code(error: DomainError) -> grpc.StatusCode:
    return _CODES[error.category]


def to_status(error: DomainError) -> grpc.Status:
    """A grpc.Status carrying the message, one ErrorInfo (reason, domain, metadata) and the typed details
    (`oma_server.api.error_details`)."""
    code = grpc_code(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    details = []
    for message in (info, *details_of(error)):
        detail = any_pb2.Any()
        detail.Pack(message)
        details.append(detail)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=details)
    return rpc_status.to_status(status)


def ended_with(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    """How an aborted call ended: its status code's name and its ErrorInfo reason (from the status details the
    abort put in the trailing metadata; empty when there are none)."""
    code = context.code()
    name = code.name if isinstance(code, grpc.StatusCode) else str(code or "UNKNOWN")
    for key, value in context.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return name, info.reason
    return name, ""


#: awaited with the status code's name and the ErrorInfo reason just before a call's error status is sent: the audit
#: log completes the call's entry there, so that a client that reads the log after its answer finds the entry ended
#: (`context.abort_with_status` sends the status at once, before the handlers around it see the abort).
BEFORE_ERROR_STATUS: ContextVar[Callable[[str, str], Awaitable[None]] | None] = ContextVar(
    "before_error_status", default=None
)


async def _abort(context: grpc.aio.ServicerContext, error: DomainError, method: str) -> None:
    hook = BEFORE_ERROR_STATUS.get()
    if hook is not None:
        await hook(grpc_code(error).name, error.reason)
    log = logger.bind(rpc=method, reason=error.reason)
    if error.category in (Category.INTERNAL, Category.UNAVAILABLE):
        log.warning("{method} failed: {message}", method=method, message=error.message)
    else:
        log.info("{method} refused: {message}", method=method, message=error.message)
    await context.abort_with_status(to_status(error))


def _unexpected(exc: BaseException, method: str) -> DomainError:
    if isinstance(exc, NotImplementedError):  # a generated base-class handler: not built yet
        return Unimplemented(
            f"{method} is not implemented in oma-server {__version__}; see the README for what this version serves",
            reason="NOT_IMPLEMENTED",
            method=method,
        )
    # The caller gets an id to quote, never the exception's text (it can name paths, queries or secrets).
    error_id = uuid.uuid4().hex[:16]
    logger.opt(exception=exc).bind(rpc=method, error_id=error_id).error(
        "unexpected error in {method} (error id {error_id})", method=method, error_id=error_id
    )
    return Internal(
        f"internal error in {method} (error id {error_id}); the server log has the details under this id",
        reason="INTERNAL",
        method=method,
        error_id=error_id,
    )


async def fail(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    """End the call for an exception a handler raised: a DomainError as itself, anything else as INTERNAL."""
    if isinstance(exc, grpc.aio.AbortError | grpc.aio.UsageError):
        raise exc  # the handler already ended the call
    await _abort(context, exc if isinstance(exc, DomainError) else _unexpected(exc, method), method)


# ---- requests: decoded and checked before a handler sees them ----------------------------------------------------
_REQUESTS = RequestCheck()


@dataclass(frozen=True)
class _Undecodable:
    """What the tolerant deserializer returns for bytes that are not the request type (grpc would answer INTERNAL
    for a deserializer that raises)."""

    error: DomainError


@functools.lru_cache(maxsize=1024)
def _request_type_name(method: str) -> str:
    try:
        return str(descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", ".")).input_type.full_name)
    except KeyError:
        return method


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # a protobuf DecodeError, or a string field that is not UTF-8
            return _Undecodable(undecodable(_request_type_name(method), exc))

    return decode


def _checked_request(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error
    if isinstance(request, Message):
        _REQUESTS.check(request)
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream's messages, each decoded whole; what is in them is the handler's to check."""
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error
        yield request


def _prepare(request_streaming: bool) -> Callable[[Any], Any]:
    return _checked_stream if request_streaming else _checked_request


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]], method: str, prepare: Callable[[Any], Any], carry_to_end: bool = True
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            work = behavior(prepare(request_or_iterator), context)
            # A call its client abandons (a dropped connection, a deadline) still carries its work to the end: the
            # handler's units of work and what follows them (spawning the job's task) are not cut in the middle.
            return await (finish(work) if carry_to_end else work)
        except Exception as exc:
            await fail(context, exc, method)

    return wrapper


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], method: str, prepare: Callable[[Any], Any]
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(prepare(request_or_iterator), context):
                yield response
        except Exception as exc:
            await fail(context, exc, method)

    return wrapper


# (handler attribute, handler factory, streaming requests, streaming responses) for the four kinds of RPC.
_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False, False),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, True, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, False, True),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True, True),
)


def _wrap(
    behavior: Callable[..., Any], method: str, prepare: Callable[[Any], Any], response_streaming: bool
) -> Callable[..., Any]:
    """A handler that answers with `yield` stays a generator; one that awaits (a unary one, or a streaming one that
    writes with `context.write`, as grpc's own health Watch does) stays a coroutine. A streaming call lasts as long as
    its client wants it (a watch), so its cancellation ends it instead of waiting for an end that never comes."""
    if inspect.isasyncgenfunction(behavior):
        return _wrap_stream(behavior, method, prepare)
    return _wrap_unary(behavior, method, prepare, carry_to_end=not response_streaming)


Rewrap = Callable[[Callable[..., Any], bool, bool], Callable[..., Any]]


def rewrapped(
    handler: grpc.RpcMethodHandler,
    rewrap: Rewrap,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same kind of handler with its behavior replaced by `rewrap(behavior, request_streaming,
    response_streaming)` (and, if given, its request deserializer): what every interceptor of this server does."""
    for attribute, factory, request_streaming, response_streaming in _KINDS:
        behavior = getattr(handler, attribute)
        if behavior:
            return factory(  # type: ignore[no-any-return]
                rewrap(behavior, request_streaming, response_streaming),
                request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """What every interceptor of this server is: one that replaces the handler of a method it serves."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.replace(handler, handler_call_details.method)

    def replace(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ErrorMappingInterceptor(HandlerInterceptor):
    def replace(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return rewrapped(
            handler,
            lambda behavior, request_streaming, response_streaming: _wrap(
                behavior, method, _prepare(request_streaming), response_streaming
            ),
            _tolerant(handler.request_deserializer, method),
        )
