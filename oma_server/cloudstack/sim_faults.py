"""Faults on demand for tests: failed commands and jobs, slow or hanging jobs, dropped connections, missing devices."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from oma_server.cloudstack.sim_errors import ApiError


@dataclass
class _Rule:
    remaining: int | None  # None: until cleared
    errorcode: int = 530
    errortext: str = ""
    cserrorcode: int = ApiError.CS_CLOUD_RUNTIME
    seconds: float | None = None  # slow_job delay; None with kind "hang" = forever

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


@dataclass
class Hold:
    """Async jobs of one command wait until `release` is set; `reached` is set once one waits (tests act on a step
    while it is in CloudStack's hands, without guessing how long that takes)."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Faults:
    """Faults on demand. Command names are case-insensitive; `times=None` means until `clear()`."""

    _fail_api: dict[str, list[_Rule]] = field(default_factory=dict)
    _fail_job: dict[str, list[_Rule]] = field(default_factory=dict)
    _slow: dict[str, list[_Rule]] = field(default_factory=dict)
    _hang: dict[str, list[_Rule]] = field(default_factory=dict)
    _drop: dict[str, list[_Rule]] = field(default_factory=dict)
    _no_device: list[_Rule] = field(default_factory=list)
    _held: dict[str, Hold] = field(default_factory=dict)

    def fail_command(
        self,
        command: str,
        errorcode: int = 530,
        errortext: str = "Internal error executing command, please contact your system administrator",
        *,
        cserrorcode: int = ApiError.CS_CLOUD_RUNTIME,
        times: int | None = 1,
        in_job: bool = False,
    ) -> None:
        """The next `times` calls of `command` fail with this error: as the HTTP answer, or (in_job=True,
        async commands only) as a failed async job (jobstatus 2)."""
        target = self._fail_job if in_job else self._fail_api
        rule = _Rule(times, errorcode, errortext, cserrorcode)
        target.setdefault(command.lower(), []).append(rule)

    def slow_job(self, command: str, seconds: float, *, times: int | None = None) -> None:
        """Async jobs of `command` take `seconds` before they finish."""
        self._slow.setdefault(command.lower(), []).append(_Rule(times, seconds=seconds))

    def hang_job(self, command: str, *, times: int | None = None) -> None:
        """Async jobs of `command` never finish (jobstatus stays 0)."""
        self._hang.setdefault(command.lower(), []).append(_Rule(times))

    def hold_job(self, command: str) -> Hold:
        """Async jobs of `command` wait for the returned hold's `release` (until `clear()` drops the hold)."""
        hold = self._held[command.lower()] = Hold()
        return hold

    def held(self, command: str) -> Hold | None:
        return self._held.get(command.lower())

    def attach_without_device(self, *, times: int | None = 1) -> None:
        """The next attach to the OMA VM succeeds in CloudStack but publishes no /dev/disk/by-id entry."""
        self._no_device.append(_Rule(times))

    def drop_connection(self, command: str, *, times: int | None = 1) -> None:
        """The next `times` requests of `command` are answered by closing the connection (a reset)."""
        self._drop.setdefault(command.lower(), []).append(_Rule(times))

    def clear(self) -> None:
        for table in (self._fail_api, self._fail_job, self._slow, self._hang, self._drop):
            table.clear()
        self._no_device.clear()
        for hold in self._held.values():
            hold.release.set()
        self._held.clear()

    @staticmethod
    def _take(table: dict[str, list[_Rule]], command: str) -> _Rule | None:
        rules = table.get(command.lower(), [])
        for rule in rules:
            if rule.take():
                return rule
        return None

    def take_api_failure(self, command: str) -> _Rule | None:
        return self._take(self._fail_api, command)

    def take_job_failure(self, command: str) -> _Rule | None:
        return self._take(self._fail_job, command)

    def take_drop(self, command: str) -> bool:
        return self._take(self._drop, command) is not None

    def job_delay(self, command: str, default: float) -> float | None:
        """Seconds the job takes; None if it hangs."""
        if self._take(self._hang, command) is not None:
            return None
        slow = self._take(self._slow, command)
        return slow.seconds if slow is not None and slow.seconds is not None else default

    def take_no_device(self) -> bool:
        return any(rule.take() for rule in self._no_device)
