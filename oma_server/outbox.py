"""The durable outbox of commands to appliances (at-least-once; the appliance deduplicates by command id).

A command is a row before it is a message: `insert_command` runs inside the caller's transaction (so "job waits
for the appliance" and "start command queued" commit together), `kick` then delivers it if the appliance is
connected to this process. Undone commands are sent again after every reconnect and after OMA restarts, until the
appliance answers with a result; the result is stored, then acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import Command as CommandRow
from oma_server.db.models import new_id, utcnow
from oma_server.errors import DeadlineExceeded, MessageRejected, NotFound
from oma_server.protocol.commands import Command, CommandResult, QueuedCommand
from oma_server.uninterruptible import uninterruptible
from oma_server.wire.stream_codec import decode_stored_result, encode_command

OPEN_STATUSES = ("pending", "sent")

Deliver = Callable[[str, QueuedCommand], bool]  # (appliance_id, command) → handed to a live session?
ResultHandler = Callable[[CommandRow, CommandResult], Awaitable[None]]  # (the command's row, its stored result)


def insert_command(appliance_id: str, command: Command, job_id: str = "", command_id: str = "") -> QueuedCommand:
    """Queue a command inside the current transaction, encoded once: a resend is the same bytes."""
    command_id = command_id or new_id()
    now = utcnow()
    queued = QueuedCommand(command_id, command.kind, encode_command(command, command_id, now))
    CommandRow.create(
        id=command_id, appliance=appliance_id, kind=command.kind, payload=queued.encoded, job_id=job_id, created_at=now
    )
    return queued


class CommandOutbox:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._deliver: Deliver | None = None
        self._result_handlers: dict[str, ResultHandler] = {}
        self._waiters: dict[str, list[asyncio.Future[CommandResult]]] = {}
        #: several OMA processes: tell the one holding the appliance's stream to deliver (None: one process)
        self.wake_holder: Callable[[str], Awaitable[None]] | None = None
        #: several OMA processes: run inside the transaction that stores an answer, to tell the others' waiters
        self.announce_answer: Callable[[str], None] | None = None
        #: how often a waiter reads its command's row again (an answer stored by another OMA process)
        self.recheck_s = 5.0

    def deliver_through(self, deliver: Deliver) -> None:
        """Who hands commands to live appliance sessions (the session hub)."""
        self._deliver = deliver

    def on_result(self, kind: str, handler: ResultHandler) -> None:
        """Run `handler` after an appliance's answer to a command of `kind` is stored."""
        self._result_handlers[kind] = handler

    async def enqueue(self, appliance_id: str, command: Command, job_id: str = "") -> QueuedCommand:
        queued = await self.db.tx(insert_command, appliance_id, command, job_id)
        logger.bind(appliance_id=appliance_id, command_id=queued.command_id, job_id=job_id or None).info(
            "queued {kind} command", kind=queued.kind
        )
        await self.kick(appliance_id, [queued])
        return queued

    async def kick(
        self, appliance_id: str, commands: list[QueuedCommand] | None = None, *, resend: bool = False
    ) -> int:
        """Deliver queued commands to the appliance if it is connected here: the given ones, else those never sent
        (or, with `resend`, every unanswered one — after a new session)."""
        if self._deliver is None:
            return 0
        if commands is None:
            commands = await self.open_commands(appliance_id, OPEN_STATUSES if resend else ("pending",))
        delivered = [c.command_id for c in commands if self._deliver(appliance_id, c)]
        if len(delivered) < len(commands) and self.wake_holder is not None:
            await self.wake_holder(appliance_id)  # not connected here: maybe to another OMA process
        if delivered:

            def mark_sent() -> None:
                CommandRow.update(status="sent", sent_at=utcnow(), attempts=CommandRow.attempts + 1).where(
                    CommandRow.id.in_(delivered) & (CommandRow.status.in_(OPEN_STATUSES))
                ).execute()

            await self.db.tx(mark_sent)
        return len(delivered)

    async def open_commands(self, appliance_id: str, statuses: tuple[str, ...] = OPEN_STATUSES) -> list[QueuedCommand]:
        def query() -> list[QueuedCommand]:
            rows = (
                CommandRow.select(CommandRow.id, CommandRow.kind, CommandRow.payload)
                .where((CommandRow.appliance == appliance_id) & CommandRow.status.in_(statuses))
                .order_by(CommandRow.created_at, CommandRow.id)
            )
            return [QueuedCommand(r.id, r.kind, bytes(r.payload)) for r in rows]

        return await self.db.run(query)

    @uninterruptible
    async def record_result(self, appliance_id: str, result: CommandResult) -> bool:
        """Store an appliance's answer (idempotent). True when it was new. Raises MessageRejected."""

        def store() -> tuple[CommandRow | None, bool]:
            row = CommandRow.get_or_none(CommandRow.id == result.command_id)
            if row is None or row.appliance_id != appliance_id:
                return row, False
            if row.status == "done":
                return row, False
            row.status = "done"
            row.completed_at = utcnow()
            row.result_outcome = result.outcome
            row.result_detail = result.detail
            row.result_payload = result.encoded
            row.save()
            if self.announce_answer is not None:
                self.announce_answer(row.id)
            return row, True

        row, new = await self.db.tx(store)
        if row is None:
            raise MessageRejected(
                "UNKNOWN_COMMAND", f"command {result.command_id} is not known to this OMA", command_id=result.command_id
            )
        if row.appliance_id != appliance_id:
            raise MessageRejected(
                "UNKNOWN_COMMAND",
                f"command {result.command_id} was not sent to this appliance",
                command_id=result.command_id,
            )
        if new:
            logger.bind(appliance_id=appliance_id, command_id=row.id, job_id=row.job_id or None).info(
                "{kind} command answered: {outcome} {detail}",
                kind=row.kind,
                outcome=row.result_outcome,
                detail=result.detail,
            )
            for waiter in self._waiters.pop(row.id, []):
                if not waiter.done():
                    waiter.set_result(result)
            handler = self._result_handlers.get(row.kind)
            if handler is not None:
                try:
                    await handler(row, result)
                except Exception:
                    logger.opt(exception=True).bind(command_id=row.id).error("command result handler failed")
        return new

    async def answered_elsewhere(self, command_id: str) -> None:
        """Another OMA process stored the answer to a command: this process's waiters for it get it now."""
        if command_id not in self._waiters:
            return
        result = await self._stored_answer(command_id)
        if result is None:
            return
        for waiter in self._waiters.get(command_id, []):
            if not waiter.done():
                waiter.set_result(result)

    async def _stored_answer(self, command_id: str) -> CommandResult | None:
        row = await self.db.run(CommandRow.get_or_none, CommandRow.id == command_id)
        if row is not None and row.status == "done" and row.result_payload:
            return decode_stored_result(bytes(row.result_payload))
        return None

    async def _answer(self, command_id: str, future: asyncio.Future[CommandResult], timeout_s: float) -> CommandResult:
        """The answer: from this process's `record_result` or `answered_elsewhere`, or read from the row every
        `recheck_s` (another process's word may be lost: NOTIFY is best-effort)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            try:
                return await asyncio.wait_for(asyncio.shield(future), min(left, self.recheck_s))
            except TimeoutError:
                stored = await self._stored_answer(command_id)
                if stored is not None:
                    return stored

    async def wait_result(self, command_id: str, timeout_s: float) -> CommandResult:
        """The appliance's answer to a command, waiting up to `timeout_s` (DeadlineExceeded after)."""
        # The waiter is registered before the row is read: an answer stored while the read runs (a fast appliance
        # on a loaded machine) then either shows in the row or resolves the waiter — never neither.
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command_id, []).append(future)
        kind = "?"
        try:
            row = await self.db.run(CommandRow.get_or_none, CommandRow.id == command_id)
            if row is None:
                raise NotFound(f"command {command_id} does not exist", reason="COMMAND_NOT_FOUND")
            if row.status == "done" and row.result_payload:
                return decode_stored_result(bytes(row.result_payload))
            kind = row.kind
            return await self._answer(command_id, future, timeout_s)
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"appliance did not answer command {command_id} ({kind}) within {timeout_s:.0f}s; "
                "check that it is connected (ListAppliances) and try again",
                reason="COMMAND_TIMEOUT",
                command_id=command_id,
            ) from exc
        finally:
            waiters = self._waiters.get(command_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(command_id, None)
