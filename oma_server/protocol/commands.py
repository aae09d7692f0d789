"""Commands the OMA sends to an appliance and the appliance's results, as domain values.

`oma_server.wire.stream_codec` encodes a command for the outbox (which stores it exactly as it is sent) and decodes
the appliance's results; business logic builds and reads only these.
"""

from __future__ import annotations

from dataclasses import dataclass

from oma_server.protocol.inventory import DiscoveredVm


@dataclass(frozen=True, slots=True)
class DiskTarget:
    disk_id: str
    disk_key: int
    nbd_uri: str
    previous_change_id: str  # "" for a full copy
    capacity_bytes: int
    resume_token: str
    target_is_new: bool
    repair_extents: tuple[tuple[int, int], ...] = ()  # (offset, length): copied too, whatever changed


@dataclass(frozen=True, slots=True)
class StartReplication:
    job_id: str
    vm_uuid: str
    disks: tuple[DiskTarget, ...]
    last_applied_sequence: int
    kind: str = "start_replication"


@dataclass(frozen=True, slots=True)
class CancelJob:
    job_id: str
    kind: str = "cancel_job"


@dataclass(frozen=True, slots=True)
class PowerOff:
    vm_uuid: str
    graceful_timeout_s: int
    kind: str = "power_off"


@dataclass(frozen=True, slots=True)
class PowerOn:
    vm_uuid: str
    kind: str = "power_on"


@dataclass(frozen=True, slots=True)
class Discover:
    name_filter: str
    kind: str = "discover"


@dataclass(frozen=True, slots=True)
class ReleaseSource:
    """A migrated VM's source side: CBT off, the appliance's snapshots deleted."""

    vm_uuid: str
    kind: str = "release_source"


@dataclass(frozen=True, slots=True)
class SetBandwidthLimit:
    """The copy-rate limits in force on an appliance, whole (bytes per second; 0: unlimited)."""

    appliance_bytes_per_second: int
    job_bytes_per_second: tuple[tuple[str, int], ...]  # (job id, rate), sorted by job id
    kind: str = "set_bandwidth_limit"


Command = StartReplication | CancelJob | PowerOff | PowerOn | Discover | ReleaseSource | SetBandwidthLimit


@dataclass(frozen=True, slots=True)
class QueuedCommand:
    """A command as the outbox holds it: its id and kind, and its wire form exactly as it is (re)sent."""

    command_id: str
    kind: str
    encoded: bytes


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: str
    outcome: str  # succeeded | failed | rejected
    detail: str
    error_class: str
    discovered: tuple[DiscoveredVm, ...] = ()  # the answer to Discover
    power_state: str = ""  # the answer to PowerOff / PowerOn
    encoded: bytes = b""  # the message as received, stored with its command

    @property
    def succeeded(self) -> bool:
        return self.outcome == "succeeded"
