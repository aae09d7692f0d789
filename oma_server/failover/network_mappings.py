"""Operator mappings from VMware networks (port groups) to CloudStack networks, optionally with a static IP and the
VMware MAC kept on the CloudStack NIC.

A mapping belongs to one VM context, or is a default (empty vm_context_id) used for every VM without its own
mapping of that network. There is at most one mapping per (VM context, source network). The target network must
exist in CloudStack; a static IP must be a valid address inside the network's CIDR (and not its gateway).

An update changes the fields its mask names (AIP-134; no mask: every mutable field); a mapping's VM context and
source network are its identity and never change.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import peewee as pw
from loguru import logger

from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.models import Network
from oma_server.db.database import Database
from oma_server.db.models import NetworkMapping, VmContext
from oma_server.errors import AlreadyExists, InvalidArgument, NotFound
from oma_server.pagination import fetch_page
from oma_server.vm_contexts.service import vm_not_found


@dataclass(frozen=True)
class MappingInput:
    vm_context_id: str
    source_network: str
    target_network_id: str
    static_ip: str = ""
    keep_mac: bool = False


MUTABLE = ("target_network_id", "static_ip", "keep_mac")
IMMUTABLE = ("id", "vm_context_id", "source_network", "created_at")


@dataclass(frozen=True)
class MappingUpdate:
    """An update as sent: the mapping's fields and the mask's paths (empty: replace every mutable field)."""

    mapping_id: str
    vm_context_id: str
    source_network: str
    target_network_id: str
    static_ip: str
    keep_mac: bool
    paths: tuple[str, ...] = ()


def fields_to_update(paths: tuple[str, ...]) -> set[str]:
    """The mutable fields an update mask names; InvalidArgument naming the first immutable or unknown path."""
    if not paths:
        return set(MUTABLE)
    for i, path in enumerate(paths):
        where = f"update_mask.paths[{i}]"
        if path in IMMUTABLE:
            raise InvalidArgument(
                f"{where} {path!r} names a field that cannot change; to move a mapping, delete it and create another",
                reason="FIELD_IMMUTABLE",
                field=where,
            )
        if path not in MUTABLE:
            raise InvalidArgument(
                f"{where} {path!r} is not a field of NetworkMapping that can change; use {', '.join(MUTABLE)}",
                reason="UPDATE_MASK_INVALID",
                field=where,
            )
    return set(paths)


def check_identity_kept(change: MappingUpdate, row: NetworkMapping) -> None:
    """A VM context or source network sent with an update must be the mapping's own: it is never ignored."""
    for name, sent, stored in (
        ("vm_context_id", change.vm_context_id, row.vm_context_id),
        ("source_network", change.source_network.strip(), row.source_network),
    ):
        if sent and sent != stored:
            raise InvalidArgument(
                f"mapping.{name} {sent!r} differs from the mapping's {stored!r}, and it cannot change; leave it empty "
                "or delete the mapping and create another",
                reason="FIELD_IMMUTABLE",
                field=f"mapping.{name}",
            )


def resolve_mappings(vm_context_id: str) -> dict[str, NetworkMapping]:
    """source network → the mapping that applies to this VM (its own, else the default). Runs on a DB thread."""
    rows = NetworkMapping.select().where(NetworkMapping.vm_context_id.in_(["", vm_context_id]))
    out: dict[str, NetworkMapping] = {}
    for row in sorted(rows, key=lambda r: r.vm_context_id != ""):  # defaults first, VM-specific ones win
        out[row.source_network] = row
    return out


def validate_static_ip(static_ip: str, network: Network | None) -> str:
    """The normalized IP, or InvalidArgument saying what is wrong with it."""
    if not static_ip:
        return ""
    try:
        address = ipaddress.ip_address(static_ip.strip())
    except ValueError:
        raise InvalidArgument(
            f"static_ip {static_ip!r} is not an IP address (for example 10.1.1.20)",
            reason="STATIC_IP_INVALID",
            static_ip=static_ip,
        ) from None
    if network is not None and network.cidr:
        net = ipaddress.ip_network(network.cidr, strict=False)
        if address not in net:
            raise InvalidArgument(
                f"static_ip {address} is outside network {network.name} ({network.cidr})",
                reason="STATIC_IP_OUTSIDE_NETWORK",
                static_ip=str(address),
                network_id=network.id,
            )
        if network.gateway and str(address) == network.gateway:
            raise InvalidArgument(
                f"static_ip {address} is the gateway of network {network.name}",
                reason="STATIC_IP_IS_GATEWAY",
                static_ip=str(address),
            )
    return str(address)


class NetworkMappingService:
    def __init__(self, db: Database, cloudstack: CloudStackClient) -> None:
        self.db = db
        self.cloudstack = cloudstack

    async def _network(self, network_id: str) -> Network:
        if not network_id:
            raise InvalidArgument("target_network_id is required", reason="TARGET_NETWORK_MISSING")
        found = [n for n in await self.cloudstack.list_networks() if n.id == network_id]
        if not found:
            raise InvalidArgument(
                f"CloudStack network {network_id} does not exist; list the networks with ListNetworks (CloudService) "
                "and use one's id",
                reason="TARGET_NETWORK_NOT_FOUND",
                target_network_id=network_id,
            )
        return found[0]

    async def create(self, data: MappingInput) -> NetworkMapping:
        source = data.source_network.strip()
        if not source:
            raise InvalidArgument(
                "source_network (the VMware network name) is required", reason="SOURCE_NETWORK_MISSING"
            )
        network = await self._network(data.target_network_id)
        static_ip = validate_static_ip(data.static_ip, network)

        def insert() -> NetworkMapping:
            if data.vm_context_id and VmContext.get_or_none(VmContext.id == data.vm_context_id) is None:
                raise vm_not_found(data.vm_context_id)
            existing = NetworkMapping.get_or_none(
                (NetworkMapping.vm_context_id == data.vm_context_id) & (NetworkMapping.source_network == source)
            )
            if existing is not None:
                raise AlreadyExists(
                    f"network {source!r} is already mapped{' for this VM' if data.vm_context_id else ' by default'} "
                    f"(mapping {existing.id}); update or delete it instead",
                    reason="NETWORK_MAPPING_EXISTS",
                    mapping_id=existing.id,
                )
            return NetworkMapping.create(
                vm_context_id=data.vm_context_id,
                source_network=source,
                target_network_id=network.id,
                static_ip=static_ip,
                keep_mac=data.keep_mac,
            )

        try:
            row = await self.db.tx(insert)
        except pw.IntegrityError:  # a concurrent create of the same (vm, source network)
            raise AlreadyExists(f"network {source!r} is already mapped", reason="NETWORK_MAPPING_EXISTS") from None
        logger.bind(vm_context_id=data.vm_context_id or None, mapping_id=row.id).info(
            "network mapping {src} → {dst} created", src=source, dst=network.id
        )
        return row

    async def list(
        self, vm_context_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[NetworkMapping], str]:
        """One page of mappings (defaults first, then by VM context and source network) and the next page's token."""

        def query() -> tuple[list[NetworkMapping], str]:
            if vm_context_id and VmContext.get_or_none(VmContext.id == vm_context_id) is None:
                raise vm_not_found(vm_context_id)  # not an empty list: a typo must not read as "nothing mapped"
            q = NetworkMapping.select().order_by(
                NetworkMapping.vm_context_id, NetworkMapping.source_network, NetworkMapping.id
            )
            if vm_context_id:
                q = q.where(NetworkMapping.vm_context_id.in_(["", vm_context_id]))
            return fetch_page(q, page_size, page_token)

        return await self.db.run(query)

    async def _get(self, mapping_id: str) -> NetworkMapping:
        if not mapping_id:
            raise InvalidArgument("mapping id is required", reason="MAPPING_ID_MISSING")
        row = await self.db.run(NetworkMapping.get_or_none, NetworkMapping.id == mapping_id)
        if row is None:
            raise NotFound(
                f"network mapping {mapping_id} does not exist; list mappings with ListNetworkMappings",
                reason="NETWORK_MAPPING_NOT_FOUND",
                mapping_id=mapping_id,
            )
        return row

    async def update(self, change: MappingUpdate) -> NetworkMapping:
        """Change the fields the mask names (every mutable one without a mask); the others keep their value."""
        fields = fields_to_update(change.paths)
        current = await self._get(change.mapping_id)
        check_identity_kept(change, current)
        target = change.target_network_id if "target_network_id" in fields else current.target_network_id
        static_ip = change.static_ip if "static_ip" in fields else current.static_ip
        keep_mac = change.keep_mac if "keep_mac" in fields else current.keep_mac
        network = await self._network(target)
        ip = validate_static_ip(static_ip, network)

        def write() -> NetworkMapping:
            NetworkMapping.update(target_network_id=network.id, static_ip=ip, keep_mac=keep_mac).where(
                NetworkMapping.id == change.mapping_id
            ).execute()
            return NetworkMapping.get_by_id(change.mapping_id)

        row = await self.db.tx(write)
        logger.bind(mapping_id=change.mapping_id).info(
            "network mapping updated ({fields}) → {dst}", fields=",".join(sorted(fields)), dst=network.id
        )
        return row

    async def delete(self, mapping_id: str) -> None:
        await self._get(mapping_id)
        await self.db.tx(lambda: NetworkMapping.delete().where(NetworkMapping.id == mapping_id).execute())
        logger.bind(mapping_id=mapping_id).info("network mapping deleted")
