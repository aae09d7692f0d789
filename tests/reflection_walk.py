"""Walk every RPC a server offers by reflection with empty, random and boundary requests (seeded, reproducible).

`Walk.run(n)` makes `n` calls spread over every method the server's reflection lists: for each method in turn an
empty request, bytes that are no message, then boundary requests (one field at a limit: lengths around the
server's limits, integer extremes, unknown enum numbers) alternating with random ones. Server-streaming calls read
a bounded number of responses and then cancel; client-streaming calls send one message and close.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from oma_server.pagination import encode_token
from vma_client_stubs.connection import Endpoint, sync_channel

F = FieldDescriptor
_BOUNDS_INT32 = (-(2**31), -1, 0, 1, 300, 301, 2**31 - 1)
_BOUNDS_UINT32 = (0, 1, 300, 301, 768, 769, 2**31 - 1, 2**31, 2**32 - 1)
_BOUNDS_INT64 = (-(2**63), -1, 0, 1, 2**62, 2**63 - 1)
_BOUNDS_UINT64 = (0, 1, 62 * 2**40 + 1, 2**63 - 1, 2**63, 2**64 - 1)
_INT_BOUNDS: dict[int, tuple[int, ...]] = {
    **dict.fromkeys((F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32), _BOUNDS_INT32),
    **dict.fromkeys((F.TYPE_UINT32, F.TYPE_FIXED32), _BOUNDS_UINT32),
    **dict.fromkeys((F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64), _BOUNDS_INT64),
    **dict.fromkeys((F.TYPE_UINT64, F.TYPE_FIXED64), _BOUNDS_UINT64),
}
_TEXT_LENGTHS = [63, 64, 65, 128, 129, 255, 256, 1024, 1025, 5000]
_ODD_TEXT = ["", " ", "x", "a b", "x\x00y", "line\n", "é日本\u202e", "../../etc/passwd", "'; DROP TABLE x; --", "%s%n"]
STREAM_RESPONSES = 3  # responses read from a server stream before cancelling
STREAM_IDLE_S = 0.5  # a server stream quiet this long is cancelled (watch streams wait for changes)
CALL_TIMEOUT_S = 15.0


@dataclass
class Outcome:
    method: str
    kind: str  # empty | undecodable | boundary | random
    code: grpc.StatusCode
    details: str
    request: str  # a short description to reproduce it


@dataclass
class Walk:
    channel: grpc.aio.Channel
    methods: list[MethodDescriptor]
    seed: int
    ids: list[str] = field(default_factory=list)  # real ids, so random requests also reach past "not found"
    outcomes: list[Outcome] = field(default_factory=list)

    @classmethod
    def by_reflection(cls, target: Endpoint, channel: grpc.aio.Channel, seed: int) -> Walk:
        """Every method of every service the server at `target` lists through its reflection service.

        Blocking (a synchronous reflection client): call it off the event loop that runs an in-process server.
        """
        with sync_channel(target) as reflection_channel:
            database = ProtoReflectionDescriptorDatabase(reflection_channel)
            pool = descriptor_pool.DescriptorPool(database)
            methods = [m for name in database.get_services() for m in pool.FindServiceByName(name).methods]
        return cls(channel, methods, seed)

    async def run(self, calls: int, concurrency: int = 8) -> list[Outcome]:
        rng = random.Random(self.seed)
        plans = {m.full_name: _Plan(m, rng, self) for m in self.methods}
        order = [m.full_name for m in self.methods]
        queue: collections.deque[tuple[MethodDescriptor, str, Any]] = collections.deque()
        for i in range(calls):
            plan = plans[order[i % len(order)]]
            queue.append((plan.method, *plan.next_request()))
        gate = asyncio.Semaphore(concurrency)

        async def one(method: MethodDescriptor, kind: str, request: Any) -> None:
            async with gate:
                self.outcomes.append(await self._call(method, kind, request))

        await asyncio.gather(*(one(*item) for item in queue))
        return self.outcomes

    async def _call(self, method: MethodDescriptor, kind: str, request: Any) -> Outcome:
        path = f"/{method.containing_service.full_name}/{method.name}"
        out_class = message_factory.GetMessageClass(method.output_type)
        raw = isinstance(request, bytes)
        serialize: Callable[[Any], bytes] | None = None if raw else _serialize
        shown = repr(request[:40]) if raw else _describe(request)
        code, details = grpc.StatusCode.OK, ""
        try:
            if method.client_streaming:
                call: Any = self.channel.stream_stream(path, serialize, out_class.FromString)(
                    iter([request]), timeout=CALL_TIMEOUT_S
                )
                # Our side is closed after one message: the server must answer and end the call, however slowly.
                code, details = await _drain(call, CALL_TIMEOUT_S)
            elif method.server_streaming:
                call = self.channel.unary_stream(path, serialize, out_class.FromString)(request, timeout=CALL_TIMEOUT_S)
                code, details = await _drain(call, STREAM_IDLE_S)
            else:
                await self.channel.unary_unary(path, serialize, out_class.FromString)(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            code, details = err.code(), err.details() or ""
        return Outcome(method.full_name, kind, code, details, shown)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def _drain(call: Any, idle_s: float) -> tuple[grpc.StatusCode, str]:
    """Read up to STREAM_RESPONSES responses; cancel a stream that is quiet for `idle_s` or has more (then: OK).

    A failed stream raises AioRpcError from `read()`; one quiet until its deadline is DEADLINE_EXCEEDED.
    """
    try:
        for _ in range(STREAM_RESPONSES):
            try:
                response = await asyncio.wait_for(call.read(), idle_s)
            except TimeoutError:
                if idle_s >= CALL_TIMEOUT_S:
                    return grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {idle_s} s"
                break
            if response is grpc.aio.EOF:
                return await call.code(), await call.details() or ""
    finally:
        call.cancel()
    return grpc.StatusCode.OK, ""


def _describe(message: Message) -> str:
    text = str(message).replace("\n", " ")
    return f"{type(message).__name__}{{{text[:160]}{'...' if len(text) > 160 else ''}}}"


class _Plan:
    """The requests for one method: empty, undecodable, then boundary and random ones alternately."""

    def __init__(self, method: MethodDescriptor, rng: random.Random, walk: Walk) -> None:
        self.method = method
        self.rng = rng
        self.walk = walk
        self.cls: Any = message_factory.GetMessageClass(method.input_type)
        boundaries = list(self._boundaries(method.input_type))
        rng.shuffle(boundaries)
        self.boundaries = iter(boundaries)
        self.count = 0

    def next_request(self) -> tuple[str, Any]:
        self.count += 1
        if self.count == 1:
            return "empty", self.cls()
        if self.count == 2:
            return "undecodable", b"\x0a\xff\xff\xff\x0f" + self.rng.randbytes(self.rng.randrange(0, 32))
        if self.count % 2 == 1:
            made = next(self.boundaries, None)
            if made is not None:
                return "boundary", made
        return "random", self._random(self.cls, 0)

    # ---- random -----------------------------------------------------------------------------------------------
    def _random(self, cls: Any, depth: int) -> Message:
        message = cls()
        for fd in message.DESCRIPTOR.fields:
            if self.rng.random() < 0.4:
                continue
            if fd.type == F.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
                continue  # no request has a map today
            if getattr(fd, "label", None) == F.LABEL_REPEATED:
                target = getattr(message, fd.name)
                count = self.rng.choice([0, 1, 2, 3, 3, 1001]) if depth == 0 else self.rng.choice([0, 1, 2])
                for _ in range(count):
                    if fd.type == F.TYPE_MESSAGE:
                        if depth < 3:
                            target.add().CopyFrom(self._random(_class_of(fd.message_type), depth + 1))
                    else:
                        target.append(self._scalar(fd))
            elif fd.type == F.TYPE_MESSAGE:
                if depth < 3:
                    getattr(message, fd.name).CopyFrom(self._random(_class_of(fd.message_type), depth + 1))
            else:
                setattr(message, fd.name, self._scalar(fd))
        return message

    def _scalar(self, fd: FieldDescriptor) -> Any:
        rng = self.rng
        if fd.type == F.TYPE_STRING:
            return self._text()
        if fd.type == F.TYPE_BYTES:
            return rng.randbytes(rng.choice([0, 1, 16, 300]))
        if fd.type == F.TYPE_BOOL:
            return rng.random() < 0.5
        if fd.type == F.TYPE_ENUM:
            defined = [v.number for v in fd.enum_type.values]
            return rng.choice([*defined, *defined, 99, -1, 2**31 - 1])
        if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return rng.choice([0.0, -1.0, 1.5, 1e30, float("inf"), float("nan")])
        bounds = _INT_BOUNDS[fd.type]
        return rng.choice([*bounds, rng.randint(min(bounds), max(bounds))])

    def _text(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.35 and self.walk.ids:
            return rng.choice(self.walk.ids)
        if roll < 0.55:
            return rng.choice(_ODD_TEXT)
        if roll < 0.65:
            return encode_token(rng.choice([0, 1, 100, 2**40, 2**62, 2**63, 10**30]))
        if roll < 0.75:
            return "a" * rng.choice(_TEXT_LENGTHS)
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-._:/ ABCXYZ"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))

    # ---- boundary ---------------------------------------------------------------------------------------------
    def _boundaries(self, descriptor: Descriptor) -> Iterator[Message]:
        """One request per (top-level scalar field, limit value); nested messages get one random instance."""
        for fd in descriptor.fields:
            repeated = getattr(fd, "label", None) == F.LABEL_REPEATED
            if fd.type == F.TYPE_MESSAGE:
                if not fd.message_type.GetOptions().map_entry:
                    message = self.cls()
                    sub = self._random(_class_of(fd.message_type), 1)
                    if repeated:
                        getattr(message, fd.name).add().CopyFrom(sub)
                    else:
                        getattr(message, fd.name).CopyFrom(sub)
                    yield message
                continue
            for value in self._limits(fd):
                message = self.cls()
                if repeated:
                    getattr(message, fd.name).append(value)
                else:
                    setattr(message, fd.name, value)
                yield message
            if repeated:  # one more item than any list may have
                message = self.cls()
                getattr(message, fd.name).extend(self._scalar(fd) for _ in range(1001))
                yield message

    def _limits(self, fd: FieldDescriptor) -> list[Any]:
        if fd.type == F.TYPE_STRING:
            return ["a" * n for n in _TEXT_LENGTHS] + _ODD_TEXT
        if fd.type == F.TYPE_BYTES:
            return [b"", b"\x00", b"x" * (1024 * 1024 + 1)]
        if fd.type == F.TYPE_BOOL:
            return [True]
        if fd.type == F.TYPE_ENUM:
            return [max(v.number for v in fd.enum_type.values) + 1, -1, 2**31 - 1]
        if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return [float("nan"), float("-inf"), 1e308]
        return list(_INT_BOUNDS[fd.type])


def _class_of(descriptor: Descriptor) -> Any:
    return message_factory.GetMessageClass(descriptor)


def summary(outcomes: list[Outcome], started: float) -> str:
    by_code = collections.Counter(o.code.name for o in outcomes)
    by_kind = collections.Counter(o.kind for o in outcomes)
    methods = len({o.method for o in outcomes})
    codes = ", ".join(f"{code} {n}" for code, n in by_code.most_common())
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items()))
    return f"{len(outcomes)} calls over {methods} methods in {time.monotonic() - started:.1f} s: {codes} ({kinds})"
