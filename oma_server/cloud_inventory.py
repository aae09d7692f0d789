"""What the OMA's CloudStack account can use — zones, guest networks, offerings, templates — read for operators.

Operators map VMware networks to CloudStack networks and choose offerings and templates; they should not need
CloudStack's own tools (or the simulator's state file) for the ids. Each list is one CloudStack call, kept for
`ttl_s` (30 s: a network created in CloudStack shows up within half a minute, while a burst of `omactl` calls or a
busy dashboard costs CloudStack one call per list); concurrent readers of an expired list share one call. Failover
and network mapping keep reading CloudStack directly: they must see a resource created a second ago.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.models import DiskOffering, Network, ServiceOffering, Template, Zone
from oma_server.errors import DomainError

T = TypeVar("T")
TTL_S = 30.0


def failover_template(templates: list[Template], configured: str) -> Template | None:
    """The template failed-over VMs are deployed from: the configured one (id or name) among the ready ones, else the
    only ready one; None when there is no such single template."""
    ready = [t for t in templates if t.is_ready]
    if configured:
        return next((t for t in ready if configured in (t.id, t.name)), None)
    return ready[0] if len(ready) == 1 else None


@dataclass(frozen=True)
class ZoneView:
    zone: Zone
    oma_zone: bool  # the OMA VM's zone: failed-over VMs are deployed here


@dataclass(frozen=True)
class TemplateView:
    template: Template
    failover_default: bool


class CloudInventory:
    def __init__(
        self,
        cloudstack: CloudStackClient,
        failover_template: str = "",
        ttl_s: float = TTL_S,
        now: Callable[[], float] | None = None,
    ) -> None:
        self.cloudstack = cloudstack
        self.configured_template = failover_template
        self.ttl_s = ttl_s
        self.now = now or (lambda: asyncio.get_running_loop().time())
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._inflight: dict[tuple[str, ...], asyncio.Task[Any]] = {}
        self.fetches = 0  # CloudStack calls made (what the cache saves is measurable)

    async def _cached(self, key: tuple[str, ...], fetch: Callable[[], Awaitable[T]]) -> T:
        hit = self._cache.get(key)
        if hit is not None and self.now() - hit[0] < self.ttl_s:
            return hit[1]  # type: ignore[no-any-return]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key, fetch))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)  # type: ignore[no-any-return]

    async def _fetch(self, key: tuple[str, ...], fetch: Callable[[], Awaitable[T]]) -> T:
        self.fetches += 1
        value = await fetch()
        self._cache[key] = (self.now(), value)
        return value

    async def _zone(self, zone_id: str) -> str:
        return zone_id or await self.oma_zone_id()

    async def oma_zone_id(self) -> str:
        return await self._cached(("oma-zone",), self.cloudstack.zone_id)

    async def zones(self) -> list[ZoneView]:
        zones = await self._cached(("zones",), self.cloudstack.list_zones)
        try:
            mine = await self.oma_zone_id()
        except DomainError:  # several zones and none configured: no zone is the OMA's (readiness says so)
            mine = ""
        return [ZoneView(z, z.id == mine) for z in sorted(zones, key=lambda z: (z.name, z.id))]

    async def networks(self, zone_id: str = "") -> list[Network]:
        zone = await self._zone(zone_id)
        found = await self._cached(("networks", zone), lambda: self.cloudstack.list_networks(zone_id=zone))
        return sorted(found, key=lambda n: (n.name, n.id))

    async def service_offerings(self) -> list[ServiceOffering]:
        found = await self._cached(("service-offerings",), self.cloudstack.list_service_offerings)
        return sorted(found, key=lambda o: (o.cpu_number or 0, o.memory_mib or 0, o.name, o.id))

    async def disk_offerings(self) -> list[DiskOffering]:
        found = await self._cached(("disk-offerings",), self.cloudstack.list_disk_offerings)
        return sorted(found, key=lambda o: (o.name, o.id))

    async def templates(self, zone_id: str = "") -> list[TemplateView]:
        zone = await self._zone(zone_id)
        found = await self._cached(("templates", zone), lambda: self.cloudstack.list_templates(zone_id=zone))
        default = failover_template(found, self.configured_template)
        return [
            TemplateView(t, default is not None and t.id == default.id) for t in sorted(found, key=lambda t: t.name)
        ]
