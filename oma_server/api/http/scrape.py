"""What a /metrics scrape reads of the running OMA: one database read plus the process's live state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import peewee as pw

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import Appliance, FailoverJob, NbdExport, ReplicationJob, VmContext
from oma_server.metrics import ScrapeState
from oma_server.nbd.manager import NbdExportManager
from oma_server.replication.store import ReplicationJobStore
from oma_server.schedules.rpo import BREACHED, recovery_point, rpo_of, scheduled_vms
from oma_server.stream.hub import SessionHub
from oma_server.watch import WatchHub


def _count_by(*columns: pw.Field) -> list[Any]:
    model = columns[0].model
    return list(model.select(*columns, pw.fn.COUNT(pw.SQL("*"))).group_by(*columns).tuples())


def _rpos(now: datetime) -> list[tuple[str, str, int, int, bool]]:
    views = rpo_of(scheduled_vms(), now)
    names = {
        vm.id: vm.name for vm in VmContext.select(VmContext.id, VmContext.name).where(VmContext.id.in_(list(views)))
    }
    return [
        (vm_id, names[vm_id], v.target_s, v.current_s, v.status == BREACHED)
        for vm_id, v in sorted(views.items())
        if vm_id in names
    ]


def _read(now: datetime) -> dict[str, list[Any]]:
    # The recovery point is the RPO's: the source's snapshot time of the last completed *and verified* sync, the
    # same one GetVmContext and the dashboard give (a completed sync not read back yet is no point to fail over to).
    points = ((vm.id, vm.name, recovery_point(vm.id)) for vm in VmContext.select(VmContext.id, VmContext.name))
    return {
        "appliances": list(
            Appliance.select(
                Appliance.id, Appliance.name, Appliance.status, Appliance.connection_state, Appliance.last_seen_at
            ).tuples()
        ),
        "replication_jobs": _count_by(ReplicationJob.status),
        "failover_jobs": _count_by(FailoverJob.kind, FailoverJob.status),
        "exports": _count_by(NbdExport.state),
        "recovery_points": [(vm_id, name, point.at) for vm_id, name, point in points if point is not None],
        "rpos": _rpos(now),
    }


@dataclass(frozen=True)
class Scraper:
    """The parts a scrape reads: the database, the open jobs, the streams, the watchers, the NBD exports, and the
    clock the RPOs are measured by."""

    db: Database
    jobs: ReplicationJobStore
    hub: SessionHub
    watch: WatchHub
    nbd: NbdExportManager
    clock: Clock

    async def state(self) -> ScrapeState:
        rows = await self.db.run(_read, self.clock.now())
        return ScrapeState(
            **rows,
            open_jobs=[(j.id, j.vm_context_id, j.status.value, j.updated_at) for j in self.jobs.open_jobs()],
            sessions=len(self.hub.sessions),
            watchers=self.watch.watchers,
            exports_served=len(self.nbd.list_exports()),
        )
