"""NBD exports of replica volumes: recorded in the database, served by the nbd-server the manager supervises.

The export name derives from the volume id by `export_name_for` (the one function). At start, `reconcile` makes
nbd-server serve exactly the exports recorded as active: missing ones are recreated, stray ones removed.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger

from oma_server.db.database import Database
from oma_server.db.models import NbdExport, Volume
from oma_server.errors import InvalidArgument, NotFound
from oma_server.joblog import JobLogService
from oma_server.nbd.manager import NbdExportManager
from oma_server.nbd.names import export_name_for
from oma_server.pagination import fetch_page


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
        if current is not None and current.device_path != volume.device_path:
            await self.manager.remove_export(name)
            current = None
        if current is None:
            async with self.joblog.step(job_id, "create_export", f"{name} → {volume.device_path}"):
                await self.manager.add_export(name, volume.device_path)

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

    async def remove(self, volume: Volume, job_id: str) -> None:
        name = export_name_for(volume.id)
        if name in {e.name for e in self.manager.list_exports()}:
            async with self.joblog.step(job_id, "remove_export", name):
                # The volume leaves the OMA: a client still attached would write into nothing, so it goes too.
                await self.manager.remove_export(name, force=True)
        await self.db.tx(lambda: NbdExport.update(state="removed").where(NbdExport.name == name).execute())

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
