"""The NBD manager's table of exports (name → record) and its rules: one export per name and per device, loading it
from the export links, rewriting the links to a desired set, and re-checking each export's device. The manager holds
the table and its lock; these functions run with the lock held."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from loguru import logger

from oma_server.errors import DomainError
from oma_server.nbd.errors import DeviceAlreadyExported, DeviceMissing, ExportExists
from oma_server.nbd.links import ExportLinks
from oma_server.nbd.model import ExportRecord, ReconcileReport
from oma_server.nbd.names import DevicePath, validate_device_path, validate_export_name

log = logger.bind(component="nbd")


def check_conflicts(
    exports: Mapping[str, ExportRecord], name: str, dev: DevicePath, ignore: set[str] | None = None
) -> None:
    """Refuse a second export of one name, or of one device (two writers would corrupt it)."""
    existing = exports.get(name)
    if existing is not None and name not in (ignore or set()):
        raise ExportExists(
            f"NBD export {name!r} already exists (device {existing.device_path}). Use it, or remove it "
            "first to re-create it.",
            export=name,
            device_path=existing.device_path,
        )
    for other in exports.values():
        if other.name in (ignore or set()) or other.name == name:
            continue
        if other.resolved_path == dev.resolved:
            raise DeviceAlreadyExported(
                f"Device {dev.path!r} ({dev.resolved}) is already exported as {other.name!r}; two "
                "exports of one device would let two writers corrupt it. Remove that export first.",
                export=name,
                other_export=other.name,
                device_path=dev.path,
            )


def load_existing(exports: dict[str, ExportRecord], links: ExportLinks) -> None:
    """Rebuild the in-memory table from the export links."""
    exports.clear()
    for link in links.load():
        exp = ExportRecord(link.name, link.target, "", link.created_at)
        try:
            exp.resolved_path = validate_device_path(link.target).resolved
        except DomainError as exc:
            exp.error = exc.message
        exports[exp.name] = exp
        log.bind(export=exp.name).info("Loaded NBD export {} -> {}", exp.name, link.target)


async def reconcile_links(
    exports: dict[str, ExportRecord],
    links: ExportLinks,
    desired: Mapping[str, str],
    client_fds: Callable[[ExportRecord], list[int]],
) -> tuple[ReconcileReport, int]:
    """Rewrite the links to match `desired`; returns the report and how many clients lost their export."""
    report = ReconcileReport()
    cut = 0
    valid: dict[str, DevicePath] = {}
    for name, device in desired.items():
        try:
            validate_export_name(name)
            valid[name] = await asyncio.to_thread(validate_device_path, device)
        except DomainError as exc:
            report.failed[name] = exc.message
            log.bind(export=name).warning("Reconcile cannot create NBD export {}: {}", name, exc.message)
    for name in sorted(set(exports) - set(desired)):
        exp = exports.pop(name)
        await asyncio.to_thread(links.delete, name)
        cut += len(await asyncio.to_thread(client_fds, exp))
        report.removed.append(name)
        log.bind(export=name).warning("Reconcile removed stray NBD export {} ({})", name, exp.device_path)
    for name, dev in sorted(valid.items()):
        current = exports.get(name)
        if current is not None and current.device_path == dev.path and not current.error:
            current.resolved_path = dev.resolved
            report.unchanged.append(name)
            continue
        try:
            check_conflicts(exports, name, dev, ignore={name})
        except DomainError as exc:
            report.failed[name] = exc.message
            continue
        if current is not None:
            if current.device_path != dev.path:
                cut += len(await asyncio.to_thread(client_fds, current))
            report.replaced.append(name)
            log.bind(export=name).warning(
                "Reconcile replaced NBD export {}: {} -> {}", name, current.device_path, dev.path
            )
        else:
            report.created.append(name)
        exp = ExportRecord(name, dev.path, dev.resolved, datetime.now(UTC))
        await asyncio.to_thread(links.write, exp.name, exp.device_path)
        exports[name] = exp
    return report, cut


async def check_devices(exports: Mapping[str, ExportRecord]) -> None:
    """Re-check each export's device: a vanished one puts the export in error, a returned one clears it."""
    for exp in list(exports.values()):
        try:
            dev = await asyncio.to_thread(validate_device_path, exp.device_path)
        except DeviceMissing as exc:
            if exp.error != exc.message:
                log.bind(export=exp.name).error("NBD export {}: {}", exp.name, exc.message)
            exp.error = exc.message
        except DomainError as exc:
            exp.error = exc.message
        else:
            if exp.error:
                log.bind(export=exp.name).info("NBD export {}: device is back", exp.name)
            exp.error = None
            exp.resolved_path = dev.resolved
