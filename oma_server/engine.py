"""The one engine for long-running jobs: who runs a job's task, and how a step of it is declared and run.

- `JobRunner` owns the tasks of one kind of job in this process: start (once — a second start of a running job is
  a no-op), resume after a restart, cancel, wait, stop at shutdown. With several OMA processes on one PostgreSQL a
  task first claims its job (`claims`: a lock `<kind>:<job id>` the process holds while the task runs), so a job
  runs in one process at a time; a claim another process holds ends the task at once, before any step.
  A job's units of work finish whole when its task is cancelled (`uninterruptible`), so cancelling is always safe;
  what the job does next time is its own state's business (failover steps resume at the step they were in,
  provisioning runs again — both idempotent).
- `Step` declares a step once: its name, the function, what an operator should check when it fails, and its retry
  rule. `run_step` runs it under that rule: a failure the rule names (by default `Unavailable`: a dependency that
  cannot be reached now, e.g. a CloudStack outage) is retried with exponential backoff before it fails the job; any
  other failure fails it at once.

Replication provisioning and every failover, cleanup and rollback step run here; schedules and verification are to
be declared the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from loguru import logger

from oma_server.errors import Unavailable

Ctx = TypeVar("Ctx")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Retry:
    """How often a step is tried when it fails with one of `on` (1: no retry), and how long it waits between."""

    attempts: int = 1
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    on: tuple[type[BaseException], ...] = (Unavailable,)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


NO_RETRY = Retry()
# What a step that talks to CloudStack or an appliance does during an outage: waits it out for about a minute.
OUTAGE = Retry(attempts=7, backoff_s=1.0, max_backoff_s=15.0)

OnRetry = Callable[[int, BaseException, float], Awaitable[None]]  # (failed attempt, its error, seconds to wait)


@dataclass(frozen=True)
class Step(Generic[Ctx, Result]):
    name: str
    run: Callable[[Ctx], Awaitable[Result]]
    hint: str = "see the job log"  # where to look when it fails
    retry: Retry = field(default=NO_RETRY)


async def run_step(step: Step[Ctx, Result], ctx: Ctx, on_retry: OnRetry | None = None) -> Result:
    """Run `step` under its retry rule; the last failure propagates."""
    attempt = 1
    while True:
        try:
            return await step.run(ctx)
        except step.retry.on as exc:
            if attempt >= step.retry.attempts:
                raise
            delay = step.retry.delay(attempt)
            if on_retry is not None:
                await on_retry(attempt, exc, delay)
            await asyncio.sleep(delay)
            attempt += 1


class Claims(Protocol):
    """Locks held by this OMA process among several (cluster/ownership.ProcessLocks)."""

    async def take(self, name: str) -> bool: ...
    async def give_up(self, name: str) -> None: ...
    async def unheld(self, names: Iterable[str]) -> set[str]: ...


class JobRunner:
    """The tasks of one kind of job in this process (see the module docstring)."""

    def __init__(self, kind: str, claims: Claims | None = None) -> None:
        self.kind = kind
        self.claims = claims
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, job_id: str, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run `work()` as the job's task unless one runs already; True when a task was started."""
        if job_id in self._tasks:
            return False
        task = asyncio.create_task(self._guarded(job_id, work), name=f"{self.kind}-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return True

    def claim_name(self, job_id: str) -> str:
        return f"{self.kind}:{job_id}"

    async def _guarded(self, job_id: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        claims, name = self.claims, self.claim_name(job_id)
        if claims is not None and not await claims.take(name):
            logger.bind(job_id=job_id).info("{kind} job runs in another OMA process", kind=self.kind)
            return
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:  # the job's own code records its failures; this is the last line
            logger.opt(exception=True).bind(job_id=job_id).error("{kind} task ended unexpectedly", kind=self.kind)
        finally:
            if claims is not None:
                await asyncio.shield(claims.give_up(name))

    def cancel_all(self) -> None:
        """Cancel every task (this process lost its claims: the jobs resume where a claim is taken again)."""
        for task in self._tasks.values():
            task.cancel()

    def running(self, job_id: str) -> bool:
        return job_id in self._tasks

    def task(self, job_id: str) -> asyncio.Task[None] | None:
        return self._tasks.get(job_id)

    def cancel(self, job_id: str) -> bool:
        task = self._tasks.get(job_id)
        if task is None or task is asyncio.current_task():
            return False
        task.cancel()
        return True

    async def wait(self, job_id: str, timeout_s: float | None = None) -> None:
        """Until the job's task ends (tests, the demo); returns at once when none runs."""
        task = self._tasks.get(job_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)

    async def stop(self) -> None:
        """Cancel every task and wait for them (each finishes the unit of work it is in)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
