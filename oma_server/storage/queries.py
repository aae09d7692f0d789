"""Read-side queries over replica volumes (the API's VolumeService)."""

from __future__ import annotations

from dataclasses import dataclass

from oma_server.db.database import Database
from oma_server.db.models import Disk, Volume
from oma_server.errors import InvalidArgument, NotFound
from oma_server.pagination import fetch_page


@dataclass(frozen=True)
class VolumePage:
    volumes: list[Volume]
    next_page_token: str


class VolumeQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, volume_id: str) -> Volume:
        if not volume_id:
            raise InvalidArgument("volume id is required", reason="VOLUME_ID_MISSING")
        row = await self.db.run(Volume.get_or_none, Volume.id == volume_id)
        if row is None:
            raise NotFound(
                f"volume {volume_id} does not exist; list volumes with ListVolumes",
                reason="VOLUME_NOT_FOUND",
                volume_id=volume_id,
            )
        return row

    async def list_volumes(
        self, page_size: int, page_token: str, vm_context_id: str = "", state: str = ""
    ) -> VolumePage:
        q = Volume.select().join(Disk).order_by(Volume.created_at, Volume.id)
        if vm_context_id:
            q = q.where(Disk.vm_context == vm_context_id)
        if state:
            q = q.where(Volume.state == state)
        return VolumePage(*await self.db.run(fetch_page, q, page_size, page_token))
