"""NBD exports of replica volumes: recorded in the database, served by the nbd-server the manager supervises.

The export name derives from the volume id by `export_name_for` (the one function). At start, `reconcile` makes
nbd-server serve exactly the exports recorded as active: missing ones are recreated, stray ones removed.

A replica is exported while a job writes it. When the job ends its export is *retired*: recorded `removed`, while
nbd-server keeps its entry, dormant — the replica is detached, so the by-id path behind it is gone and nothing can
be read or written through it. The next job of that replica attaches it again under the same by-id path, and the
entry serves again without touching nbd-server. This matters because nbd-server applies every change of its export
set by restarting (oma_server/nbd/manager.py): restarting for every job start and end would drop the handshakes of
the appliances connecting meanwhile, and at 50 VMs through a 14-slot OMA VM it did (see docs/cloudstack.md). So
nbd-server restarts only for a replica's first export in this process; dormant entries are dropped at the OMA's
next start, or replaced when a replica's device path changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger

from oma_server.db.database import Database
from oma_server.db.models import NbdExport, Volume
from oma_server.errors import InvalidArgument, NotFound
from oma_server.joblog import JobLogService
from oma_server.nbd.errors import DeviceAlreadyExported
from oma_server.nbd.manager import NbdExportManager
from oma_server.nbd.names import export_name_for
from oma_server.pagination import fetch_page
from oma_server.uninterruptible import finish


@dataclass(frozen=True)
class ExportView:
    row: NbdExport
    uri: str
    disk_id: str
    state: str  # from the manager when it serves the export, else the recorded state


@dataclass(frozen=True)
class ExportPage:
    exports: list[ExportView]
    next_page_token: str


class ExportService:
    def __init__(self, db: Database, manager: NbdExportManager, joblog: JobLogService) -> None:
        self.db = db
        self.manager = manager
        self.joblog = joblog

    def _view(self, row: NbdExport, disk_id: str) -> ExportView:
        served = {e.name: e for e in self.manager.list_exports()}
        state = row.state
        if row.state == "active" and row.name not in served:
            state = "error"
        return ExportView(row, self.manager.uri_for(row.name), disk_id, state)

    async def ensure(self, volume: Volume, job_id: str) -> ExportView:
        """The volume's export, added to nbd-server if it does not serve it (or serves another device)."""
        name = export_name_for(volume.id)
        served = {e.name: e for e in self.manager.list_exports()}
        current = served.get(name)
        # A change of what nbd-server serves restarts it; cancelled half-way (a workflow stopped at shutdown) it
        # could leave a new nbd-server that no stop knows of, so each change runs to its end.
        if current is not None and current.device_path != volume.device_path:
            await finish(self.manager.remove_export(name))
            current = None
        if current is None:
            async with self.joblog.step(job_id, "create_export", f"{name} → {volume.device_path}"):
                await finish(self._add(name, volume.device_path))

        def record() -> NbdExport:
            row = NbdExport.get_or_none(NbdExport.name == name)
            if row is None:
                return NbdExport.create(
                    name=name,
                    volume=volume.id,
                    device_path=volume.device_path,
                    address=self.address,
                    state="active",
                )
            NbdExport.update(device_path=volume.device_path, address=self.address, state="active").where(
                NbdExport.name == name
            ).execute()
            return NbdExport.get_by_id(name)

        row = await self.db.tx(record)
        return self._view(row, volume.disk_id)

    async def _add(self, name: str, device_path: str) -> None:
        try:
            await self.manager.add_export(name, device_path)
        except DeviceAlreadyExported as exc:
            # The kernel gives a newly attached disk the lowest free name, so a dormant entry of a replica detached
            # earlier may still point at this device node: it goes, then the export is added.
            other = exc.metadata.get("other_export", "")
            if not other or await self.db.run(_is_active, other):
                raise
            await self.manager.remove_export(other, force=True)
            await self.manager.add_export(name, device_path)

    async def retire(self, volume: Volume, job_id: str) -> None:
        """The volume's export is no longer offered (its job ended, its volume leaves the OMA VM): recorded
        `removed`; nbd-server keeps the entry dormant (see the module docstring)."""
        name = export_name_for(volume.id)
        changed = await self.db.tx(
            lambda: (
                NbdExport.update(state="removed")
                .where((NbdExport.name == name) & (NbdExport.state != "removed"))
                .execute()
            )
        )
        if changed:
            await self.joblog.note(job_id, "retire_export", f"{name} (dormant until its volume is attached again)")

    @property
    def address(self) -> str:
        return f"{self.manager.advertise_host}:{self.manager.port}"

    async def desired(self) -> dict[str, str]:
        """Every export recorded as active (name → device path): what nbd-server must serve."""
        rows: list[NbdExport] = await self.db.run(lambda: list(NbdExport.select().where(NbdExport.state == "active")))
        return {r.name: r.device_path for r in rows}

    async def start(self) -> None:
        """Start nbd-server serving exactly the recorded exports (missing ones recreated, strays removed)."""
        report = await self.manager.start(await self.desired())
        if report is not None and (report.changed or report.failed):
            logger.info(
                "NBD exports reconciled at start: created {c}, removed {r}, replaced {p}, failed {f}",
                c=report.created,
                r=report.removed,
                p=report.replaced,
                f=report.failed,
            )

    async def get(self, name: str) -> ExportView:
        if not name:
            raise InvalidArgument("export name is required", reason="EXPORT_NAME_MISSING")

        def load() -> tuple[NbdExport, str] | None:
            row = NbdExport.get_or_none(NbdExport.name == name)
            return None if row is None else (row, Volume.get_by_id(row.volume_id).disk_id)

        found = await self.db.run(load)
        if found is None:
            raise NotFound(
                f"NBD export {name!r} does not exist; list exports with ListNbdExports",
                reason="EXPORT_NOT_FOUND",
                export=name,
            )
        return self._view(*found)

    async def list_exports(self, page_size: int, page_token: str, state: str = "") -> ExportPage:
        q = NbdExport.select(NbdExport, Volume).join(Volume).order_by(NbdExport.created_at, NbdExport.name)
        if state:
            q = q.where(NbdExport.state == state)
        rows, token = await self.db.run(fetch_page, q, page_size, page_token)
        return ExportPage([self._view(r, r.volume.disk_id) for r in rows], token)


def _is_active(name: str) -> bool:
    return NbdExport.get_or_none((NbdExport.name == name) & (NbdExport.state == "active")) is not None
