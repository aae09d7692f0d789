"""The outbox never loses an appliance's answer to a waiting workflow step.

A live failover once sat at `power_off_source` until its command timeout on a loaded CI machine: the appliance's
answer was stored while the step's `wait_result` was reading the command row (the read saw it unanswered), and the
step's waiter was registered only after the answer had woken nobody. The test stores the answer exactly in that
window — between the row's read and the step's wait — and the answer must still arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from oma_server.db.database import Database
from oma_server.protocol.commands import PowerOff
from oma_server.server import OmaServer
from oma_server.wire.stream_codec import decode_command_result
from tests.factories import enroll
from vma.v1 import stream_pb2

T = TypeVar("T")


class AnswerDuringRead:
    """The outbox's database, through which the command's answer is stored right after its row was read."""

    def __init__(self, db: Database, answer: Callable[[], Any]) -> None:
        self._db = db
        self._answer = answer
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        row = await self._db.run(fn, *args, **kwargs)
        self.reads += 1
        if self.reads == 1:  # the wait's read of the command row: it saw no answer; the answer lands now
            await self._answer()
        return row


async def test_an_answer_stored_while_the_wait_reads_the_command_is_not_lost(
    channel: grpc.aio.Channel, oma_server: OmaServer
) -> None:
    app = oma_server.app
    appliance = await enroll(channel)
    queued = await app.outbox.enqueue(appliance.appliance_id, PowerOff(vm_uuid="vm-1", graceful_timeout_s=5))
    result = decode_command_result(
        stream_pb2.CommandResult(command_id=queued.command_id, outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED)
    )
    real_db = app.outbox.db
    proxy = AnswerDuringRead(real_db, lambda: app.outbox.record_result(appliance.appliance_id, result))
    app.outbox.db = proxy  # type: ignore[assignment]
    try:
        answer = await asyncio.wait_for(app.outbox.wait_result(queued.command_id, timeout_s=30), timeout=10)
    finally:
        app.outbox.db = real_db
    assert proxy.reads >= 1
    assert answer.command_id == queued.command_id
    assert answer.succeeded
    assert app.outbox._waiters == {}  # no waiter is left behind after the answer
