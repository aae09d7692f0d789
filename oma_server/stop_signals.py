"""SIGTERM and SIGINT as one stop request, from the first line of `main()` to the process's exit.

The handlers are plain `signal.signal` handlers, installed before anything starts (so no moment of start-up is
left to the default action, which would kill the process and orphan its nbd-server) and never removed: asyncio's
`loop.add_signal_handler` would put the default action back when the loop closes, and a signal during the last
steps of shutdown would then kill the process. A handler only records the signal and wakes the loop; it never
raises (no KeyboardInterrupt in the middle of a database write) and never stops anything itself: the serve loop
decides what to stop and in which order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self) -> None:
        self.received: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def requested(self) -> asyncio.Event:
        """The stop request as an event of the running loop; already set when a signal came before the loop."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        if self.received:
            self._event.set()
        return self._event

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            # The loop may be gone (shutdown finished): then there is nothing left to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
