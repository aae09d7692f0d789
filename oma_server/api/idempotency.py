"""Every unary request type with a `request_id` field is answered once per id (AIP-155; oma_server/idempotency.py).

The interceptor sits after the access and request checks (a caller without the right role never reads a stored
answer; a request is validated whole before its key is looked at) and before the handler: the servicers stay as
they are, and a new mutating RPC is covered by giving its request a `request_id`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from oma_server.api.status import HandlerInterceptor, rewrapped
from oma_server.idempotency import IdempotencyStore, RequestKey, fingerprint

REQUEST_ID = "request_id"


@functools.lru_cache(maxsize=512)
def _response_type(method: str) -> type[Message] | None:
    """The response class of a method whose request has a request_id; None for every other method."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    except KeyError:
        return None
    if REQUEST_ID not in found.input_type.fields_by_name:
        return None
    return message_factory.GetMessageClass(found.output_type)  # type: ignore[no-any-return]


def request_key(method: str, request: Message) -> RequestKey:
    """The key of a request: its request_id and the fingerprint of everything else in it."""
    rest = type(request)()
    rest.CopyFrom(request)
    rest.ClearField(REQUEST_ID)
    return RequestKey(method, getattr(request, REQUEST_ID), fingerprint(rest.SerializeToString(deterministic=True)))


class IdempotencyInterceptor(HandlerInterceptor):
    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store

    def replace(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None or (response_type := _response_type(method)) is None:
            return handler
        return rewrapped(handler, lambda behavior, _rs, _ss: self._once(behavior, method, response_type))

    def _once(
        self, behavior: Callable[..., Awaitable[Any]], method: str, response_type: type[Message]
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not isinstance(request, Message) or not getattr(request, REQUEST_ID):
                return await behavior(request, context)
            return await self.store.once(
                request_key(method, request),
                lambda: behavior(request, context),
                lambda response: response.SerializeToString(),
                response_type.FromString,
            )

        return wrapper
