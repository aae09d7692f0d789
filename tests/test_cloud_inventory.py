"""CloudService: the CloudStack inventory the OMA's account can use, read through the OMA (the simulator over HTTP
as CloudStack), paged, and cached briefly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from oma.v1 import cloud_pb2, cloud_pb2_grpc
from oma_server.app import App
from oma_server.cloudstack.sim_seed import _seed_network
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.conftest import make_settings
from vma_client_stubs.errors import error_info_of

GIB = 1 << 30


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = OmaServer(App(make_settings(tmp_path)))
    await server.start()
    yield server
    await server.stop(grace=0.5)


@pytest.fixture
async def cloud(oma: OmaServer) -> AsyncIterator[cloud_pb2_grpc.CloudServiceStub]:
    async with oma_channel(oma) as channel:
        yield cloud_pb2_grpc.CloudServiceStub(channel)


async def test_zones_networks_offerings_templates(cloud: cloud_pb2_grpc.CloudServiceStub) -> None:
    (zone,) = (await cloud.ListZones(cloud_pb2.ListZonesRequest())).zones
    assert zone.name == "sim-zone-1" and zone.oma_zone and zone.network_type == "Advanced" and zone.id

    networks = (await cloud.ListNetworks(cloud_pb2.ListNetworksRequest())).networks
    assert [(n.name, n.type, n.cidr, n.gateway, n.zone_id) for n in networks] == [
        ("guest-net-1", "Isolated", "10.1.1.0/24", "10.1.1.1", zone.id),
        ("shared-net-1", "Shared", "192.168.100.0/24", "192.168.100.1", zone.id),
    ]
    assert all(n.id and n.state for n in networks)
    same = (await cloud.ListNetworks(cloud_pb2.ListNetworksRequest(zone_id=zone.id))).networks
    assert list(same) == list(networks)

    offerings = (await cloud.ListServiceOfferings(cloud_pb2.ListServiceOfferingsRequest())).service_offerings
    assert [(o.name, o.cpu_count, o.memory_mib) for o in offerings] == [
        ("Small Instance", 1, 1024),
        ("Medium Instance", 2, 4096),
        ("Large Instance", 8, 16384),
    ]
    disks = (await cloud.ListDiskOfferings(cloud_pb2.ListDiskOfferingsRequest())).disk_offerings
    assert [(d.name, d.customized, d.disk_size_bytes) for d in disks] == [
        ("Custom", True, 0),
        ("Small", False, 5 * GIB),
    ]

    (template,) = (await cloud.ListTemplates(cloud_pb2.ListTemplatesRequest())).templates
    assert template.name == "Ubuntu 22.04" and template.ready and template.failover_default
    assert template.format == "QCOW2" and template.zone_id == zone.id


async def test_pages(cloud: cloud_pb2_grpc.CloudServiceStub) -> None:
    first = await cloud.ListServiceOfferings(cloud_pb2.ListServiceOfferingsRequest(page_size=2))
    assert [o.name for o in first.service_offerings] == ["Small Instance", "Medium Instance"] and first.next_page_token
    rest = await cloud.ListServiceOfferings(
        cloud_pb2.ListServiceOfferingsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert [o.name for o in rest.service_offerings] == ["Large Instance"] and rest.next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await cloud.ListNetworks(cloud_pb2.ListNetworksRequest(page_token="not-a-token"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(raised.value)
    assert info is not None and info.reason == "PAGE_TOKEN_INVALID"


async def test_cached_briefly(oma: OmaServer, cloud: cloud_pb2_grpc.CloudServiceStub) -> None:
    inventory = oma.app.cloud
    sim = oma.app.simulator
    assert inventory is not None and sim is not None
    clock = [1000.0]
    inventory.now = lambda: clock[0]
    names = [n.name for n in (await cloud.ListNetworks(cloud_pb2.ListNetworksRequest())).networks]
    before = inventory.fetches  # the OMA's zone, then its networks
    _seed_network(sim.state, {"name": "new-net", "cidr": "10.9.0.0/24", "gateway": "10.9.0.1"})  # made in CloudStack
    again = [n.name for n in (await cloud.ListNetworks(cloud_pb2.ListNetworksRequest())).networks]
    assert again == names and inventory.fetches == before  # the second answer came from the cache
    clock[0] += inventory.ttl_s + 1
    later = [n.name for n in (await cloud.ListNetworks(cloud_pb2.ListNetworksRequest())).networks]
    assert "new-net" in later and inventory.fetches > before
