"""What runs a unit of work: `Database` (a database thread, one transaction) or, for stores kept in memory,
`InlineRunner` (at once, on the event loop). Services take a `Runner`, so the same code runs on both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Runner(Protocol):
    """`tx`: one transaction; `run`: a read (or autocommitted statements)."""

    async def tx(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


class InlineRunner:
    """The store's runner for a repository that needs no database: work runs at once, on the event loop."""

    async def tx(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)
