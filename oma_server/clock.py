"""The clock adapter: wall time for records, monotonic time for deadlines, and waiting for wall time to pass (the
scheduler). Tests substitute `ManualClock`, whose wall time moves only when told, so that hours of schedule run in
moments and no test sleeps through real minutes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` of wall time have passed."""
        ...


class SystemClock:
    def now(self) -> datetime:
        """Naive UTC, as stored in the database."""
        return datetime.now(UTC).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """Wall time that stands still until `advance` or `set` moves it; sleepers wake when it passes their deadline.

    `monotonic()` stays real: stream liveness and retry back-offs keep their real pace while the wall clock jumps.
    """

    def __init__(self, start: datetime) -> None:
        self._now = start.replace(tzinfo=None) if start.tzinfo is None else start.astimezone(UTC).replace(tzinfo=None)
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + timedelta(seconds=max(0.0, seconds))
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (deadline, future)
        self._sleepers.append(entry)
        try:
            await future
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> datetime:
        return self.set(self._now + timedelta(seconds=seconds))

    def set(self, when: datetime) -> datetime:
        """Move wall time to `when` (naive UTC; never backwards) and wake the sleepers whose deadline it reached."""
        if when < self._now:
            raise ValueError(f"a ManualClock does not go back ({when} < {self._now})")
        self._now = when
        for deadline, future in list(self._sleepers):
            if deadline <= when and not future.done():
                future.set_result(None)
        return when
