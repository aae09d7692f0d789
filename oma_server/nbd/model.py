"""What the export manager reports and keeps per export (no process, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

STATE_PENDING = "pending"
STATE_ACTIVE = "active"
STATE_ERROR = "error"


@dataclass(frozen=True)
class ExportInfo:
    """One export as callers see it."""

    name: str
    device_path: str
    uri: str
    state: str
    created_at: datetime
    resolved_path: str = ""
    error: str | None = None


@dataclass
class ReconcileReport:
    """What reconcile() changed; names in each list, failures with the reason."""

    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    restarted: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.created or self.removed or self.replaced)


@dataclass
class ExportRecord:
    """The manager's own record of one export (its link, the device it resolves to, a device error)."""

    name: str
    device_path: str
    resolved_path: str
    created_at: datetime
    error: str | None = None
