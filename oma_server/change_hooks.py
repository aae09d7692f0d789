"""Who must look again after a store committed a change (the scheduler, the bandwidth governor)."""

from __future__ import annotations

from collections.abc import Callable


class ChangeHooks:
    """Callbacks a store runs after each committed change; `append` one, call the hooks to run them all."""

    def __init__(self) -> None:
        self._hooks: list[Callable[[], None]] = []

    def append(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    def __call__(self) -> None:
        for hook in self._hooks:
            hook()
