"""The OMA's commands on the appliance side: handlers registered per command kind, run one at a time in arrival
order by a worker that outlives connections; a command id already processed is answered from the outbox's cache
without running its handler again. A handler's exception becomes a FAILED result (INTERNAL), a missing handler a
REJECTED one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from oma.common.v1 import jobs_pb2
from vma.v1 import stream_pb2
from vma_client_stubs.outbox import Outbox
from vma_client_stubs.stream_session import MAX_DETAIL_CHARS, Session, fit_text

CommandHandler: TypeAlias = Callable[[stream_pb2.Command], Awaitable[stream_pb2.CommandResult | None]]

# Names of the vma.v1.Command `kind` oneof: the keys handlers are registered under.
COMMAND_KINDS: frozenset[str] = frozenset(f.name for f in stream_pb2.Command.DESCRIPTOR.oneofs_by_name["kind"].fields)
COMMAND_QUEUE_SIZE = 1_000


class CommandRunner:
    """Queues the commands received on any connection and runs their handlers; results go into the outbox."""

    def __init__(
        self, outbox: Outbox, *, wake: Callable[[], None], persist: Callable[[], Awaitable[None]], log: Any
    ) -> None:
        self._outbox = outbox
        self._wake = wake
        self._persist = persist
        self._log = log
        self._handlers: dict[str, CommandHandler] = {}
        self._commands: asyncio.Queue[stream_pb2.Command] = asyncio.Queue(COMMAND_QUEUE_SIZE)
        self._inflight: set[str] = set()

    def register(self, kind: str, handler: CommandHandler) -> None:
        if kind not in COMMAND_KINDS:
            raise ValueError(f"unknown command kind {kind!r}; expected one of {sorted(COMMAND_KINDS)}")
        self._handlers[kind] = handler

    def result_sent(self, command_id: str) -> None:
        """A result of this command was recorded outside a handler: a queued run of it records nothing."""
        self._inflight.discard(command_id)

    def received(self, session: Session, command: stream_pb2.Command) -> None:
        log = self._log.bind(session_id=session.session_id, command_id=command.command_id)
        if not command.command_id:
            log.warning("ignoring a command without command_id")
            return
        if self._outbox.requeue_result(command.command_id) is not None:
            log.info("command already processed; re-sending its result")
            session.sent_results.discard(command.command_id)
            session.wake.set()
            return
        if command.command_id in self._inflight:
            log.debug("command is already being processed")
            return
        try:
            self._commands.put_nowait(command)
        except asyncio.QueueFull:
            log.warning("command queue full ({n}); the OMA will re-deliver it", n=COMMAND_QUEUE_SIZE)
            return
        self._inflight.add(command.command_id)

    async def work(self) -> None:
        """Run queued commands forever (until cancelled)."""
        while True:
            command = await self._commands.get()
            result = await self._run_handler(command)
            result.command_id = command.command_id
            result.detail = fit_text(result.detail, MAX_DETAIL_CHARS)
            if command.command_id in self._inflight:
                self._inflight.discard(command.command_id)
                self._outbox.add_result(result)
                self._wake()
                await self._persist()

    async def _run_handler(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        kind = command.WhichOneof("kind")
        log = self._log.bind(command_id=command.command_id)
        if kind == "start_replication":
            start = command.start_replication
            self._outbox.observe_server_sequence(start.job_id, start.last_applied_sequence)
            log = log.bind(job_id=start.job_id)
        handler = self._handlers.get(kind or "")
        if handler is None:
            log.warning("rejecting command {kind}: no handler registered", kind=kind)
            return stream_pb2.CommandResult(
                outcome=stream_pb2.COMMAND_OUTCOME_REJECTED,
                error_class=jobs_pb2.ERROR_CLASS_INVALID_COMMAND,
                detail=f"this appliance does not handle {kind or 'an empty'} command",
            )
        log.info("running command {kind}", kind=kind)
        try:
            result = await handler(command)
        except Exception as exc:
            log.exception("handler of {kind} failed", kind=kind)
            return stream_pb2.CommandResult(
                outcome=stream_pb2.COMMAND_OUTCOME_FAILED,
                error_class=jobs_pb2.ERROR_CLASS_INTERNAL,
                detail=f"{kind} failed on the appliance: {type(exc).__name__}: {exc}",
            )
        if result is None:
            return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED)
        copy = stream_pb2.CommandResult()
        copy.CopyFrom(result)
        if copy.outcome == stream_pb2.COMMAND_OUTCOME_UNSPECIFIED:
            copy.outcome = stream_pb2.COMMAND_OUTCOME_SUCCEEDED
        return copy
