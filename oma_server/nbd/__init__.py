"""NBD exports on a real nbdkit (file plugin, dir= mode): names, validation, the supervised export manager.

Public API (business logic; no grpc here):
- `export_name_for(volume_id)` — the one function deriving export names from ids.
- `validate_export_name(name)`, `validate_device_path(path)`.
- `NbdExportManager` with `ExportInfo` / `ReconcileReport`; design notes in `oma_server.nbd.manager`.
"""

from oma_server.nbd.errors import (
    DeviceAlreadyExported,
    DeviceMissing,
    DevicePathInvalid,
    DeviceUnsuitable,
    ExportExists,
    ExportInUse,
    ExportNameInvalid,
    ExportNotFound,
    NbdPortInUse,
    NbdServerUnavailable,
)
from oma_server.nbd.manager import NbdExportManager
from oma_server.nbd.model import STATE_ACTIVE, STATE_ERROR, STATE_PENDING, ExportInfo, ReconcileReport
from oma_server.nbd.names import DevicePath, export_name_for, validate_device_path, validate_export_name

__all__ = [
    "STATE_ACTIVE",
    "STATE_ERROR",
    "STATE_PENDING",
    "DeviceAlreadyExported",
    "DeviceMissing",
    "DevicePath",
    "DevicePathInvalid",
    "DeviceUnsuitable",
    "ExportExists",
    "ExportInUse",
    "ExportInfo",
    "ExportNameInvalid",
    "ExportNotFound",
    "NbdExportManager",
    "NbdPortInUse",
    "NbdServerUnavailable",
    "ReconcileReport",
    "export_name_for",
    "validate_device_path",
    "validate_export_name",
]
