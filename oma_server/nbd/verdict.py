"""When the supervisor's probes say nbdkit is wrong enough to restart it.

A round is wrong when the handshake fails, or when exports whose devices are fine are missing from nbdkit's
listing and were missing in every wrong round since the streak began. Replicas attach and detach all the time (50
VMs through an OMA VM of 14 slots): a link's device can appear or vanish between the listing and the device check,
so one round may miss an export that is fine. Only the same export missing round after round says nbdkit itself is
wrong — a restart cuts every copy in flight, so it must not follow from churn.
"""

from __future__ import annotations


class ProbeStreak:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.failures = 0
        self._missing: set[str] | None = None  # missing in every wrong listing of the streak (None: none yet)

    def failed(self) -> None:
        """The handshake did not complete."""
        self.failures += 1

    def answered(self, missing: set[str]) -> set[str]:
        """A listing came back; `missing` are the exports with a good device that it lacks. Returns those missing
        in every listing of the streak (empty: the round was good and the streak ends)."""
        persistent = set(missing) if self._missing is None else self._missing & missing
        if persistent:
            self.failures += 1
            self._missing = persistent
        else:
            self.reset()
        return persistent

    @property
    def due(self) -> bool:
        return self.failures >= self.limit

    def reset(self) -> None:
        self.failures = 0
        self._missing = None
