"""A background loop of passes: each pass says when the next is due, a change can wake it sooner, and it runs at
least every `tick_s`. The scheduler and the bandwidth governor are such loops. Sleeping goes through the clock
adapter, so a test's ManualClock drives a loop through hours in moments (`pass_after_now`).

With a `leadership`, a pass runs only while this process holds it (several OMA processes on one PostgreSQL); the
others try again every `tick_s`, and run their `follow_pass` meanwhile (what every process does for its own
clients, e.g. the scheduler's RPO updates to this process's watchers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from loguru import logger

from oma_server.clock import Clock
from oma_server.watch import Subscription


class Leadership(Protocol):
    """Who leads among OMA processes (oma_server.schedules.leadership): blocking calls, run in a thread."""

    def try_lead(self) -> bool: ...

    def release(self) -> None: ...


class PassLoop:
    def __init__(
        self,
        name: str,
        clock: Clock,
        run_pass: Callable[[], Awaitable[float]],
        tick_s: float,
        leadership: Leadership | None = None,
        follow_pass: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.follow_pass = follow_pass  # each tick this process does not lead
        self.clock = clock
        self.run_pass = run_pass  # one pass; returns the seconds until the next is due
        self.tick_s = tick_s
        self.leadership = leadership
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waker: asyncio.Task[None] | None = None
        self.begun = 0  # passes begun
        self.passes = 0  # passes done
        self._pass_done = asyncio.Condition()

    def start(self, wake_on: Subscription | None = None) -> None:
        """Run passes from now; with `wake_on`, one more after each change it delivers (a replication job that
        ended: a place, a limit or a VM is free)."""
        self._task = asyncio.create_task(self._loop(), name=self.name)
        if wake_on is not None:
            self._waker = asyncio.create_task(self._wake_on(wake_on), name=f"{self.name}-wake")

    async def _wake_on(self, changes: Subscription) -> None:
        with changes:
            while True:
                await changes.next()
                self.wake()

    async def stop(self) -> None:
        for task in (self._waker, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.leadership is not None:
            await asyncio.to_thread(self.leadership.release)

    def wake(self) -> None:
        """Run a pass now (something changed)."""
        self._wake.set()

    async def pass_after_now(self) -> None:
        """Wake the loop and wait for a pass that began after this call to end: what a test does after moving its
        clock, so that it reads what the loop made of the new time."""
        target = self.begun + 1
        self.wake()
        async with self._pass_done:
            await self._pass_done.wait_for(lambda: self.passes >= target)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            self.begun += 1
            delay = self.tick_s
            try:
                if self.leadership is None or await asyncio.to_thread(self.leadership.try_lead):
                    delay = await self.run_pass()
                elif self.follow_pass is not None:
                    await self.follow_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.opt(exception=True).error(
                    "{name} pass failed; trying again in {s} s", name=self.name, s=self.tick_s
                )
            async with self._pass_done:
                self.passes += 1
                self._pass_done.notify_all()
            sleeper = asyncio.ensure_future(self.clock.sleep(delay))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
