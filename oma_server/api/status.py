"""The one place that turns domain errors into gRPC status with google.rpc.ErrorInfo details (AIP-193).

`ErrorMappingInterceptor` wraps every handler: a DomainError becomes its status code, message and ErrorInfo; any
other exception becomes INTERNAL with a log line, never a crashed server or stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from loguru import logger

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
    """A grpc.Status carrying the message and one ErrorInfo (reason, domain, metadata)."""
    code = grpc_code(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=[detail])
    return rpc_status.to_status(status)


def error_info_of(call_error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """Client side: the ErrorInfo in a failed call's status details, if any."""
    trailing = call_error.trailing_metadata() or ()
    for key, value in trailing:  # type: ignore[misc]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None


async def _abort(context: grpc.aio.ServicerContext, error: DomainError, method: str) -> None:
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
    logger.opt(exception=exc).error("unexpected error in {method}", method=method)
    return Internal(
        f"internal error in {method}: {type(exc).__name__}: {exc}; the server log has the traceback",
        reason="INTERNAL",
        method=method,
    )


async def _fail(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    """End the call for an exception a handler raised: a DomainError as itself, anything else as INTERNAL."""
    if isinstance(exc, grpc.aio.AbortError | grpc.aio.UsageError):
        raise exc  # the handler already ended the call
    await _abort(context, exc if isinstance(exc, DomainError) else _unexpected(exc, method), method)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            # A call its client abandons (a dropped connection, a deadline) still carries its work to the end: the
            # handler's units of work and what follows them (spawning the job's task) are not cut in the middle.
            return await finish(behavior(request_or_iterator, context))
        except Exception as exc:
            await _fail(context, exc, method)

    return wrapper


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request_or_iterator, context):
                yield response
        except Exception as exc:
            await _fail(context, exc, method)

    return wrapper


# (handler attribute, handler factory, wrapper) for the four kinds of RPC.
_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, _wrap_unary),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, _wrap_unary),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, _wrap_stream),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, _wrap_stream),
)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for attribute, factory, wrap in _KINDS:
            behavior = getattr(handler, attribute)
            if behavior:
                return factory(
                    wrap(behavior, handler_call_details.method),  # type: ignore[operator]
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
