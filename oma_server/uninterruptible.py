"""Units of work that finish whatever happens to the task that asked for them.

A stream's reader task is cancelled the moment its call ends; a workflow task is cancelled at shutdown; an RPC
handler is cancelled when its client goes away. If such a cancellation lands while a database transaction runs on a
worker thread, the thread commits anyway (a thread cannot be interrupted) but the coroutine that would have applied
the commit's in-memory consequences — the job cache, the durable cursor, acks, watchers — never runs: memory and
database split. `uninterruptible` closes that gap: the unit runs as a task of its own; a cancellation of the caller
is held back until the unit has finished (committed and applied, or rolled back), then delivered.

asyncio.shield alone is not enough: it lets the caller return at once while the unit still runs, so whatever the
caller does next (release a lock, close the session, close the database) would overtake the unit.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from loguru import logger

T = TypeVar("T")
P = ParamSpec("P")


async def finish(work: Awaitable[T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile; then re-raise that cancellation."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled() and (error := task.exception()) is not None:
            # The caller is gone and cannot hear of it: say it here, then let the cancellation go on.
            logger.opt(exception=error).error("a unit of work failed after its caller was cancelled")
        raise asyncio.CancelledError
    return task.result()


def uninterruptible(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate an async function whose body is one unit of work (see the module docstring)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return await finish(fn(*args, **kwargs))

    return wrapper
