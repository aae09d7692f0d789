"""CloudService servicer: the CloudStack inventory the OMA's account can use (decode, call, encode)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from oma.v1 import cloud_pb2, cloud_pb2_grpc
from oma_server.api.convert import (
    disk_offering_to_proto,
    network_to_proto,
    service_offering_to_proto,
    template_to_proto,
    zone_to_proto,
)
from oma_server.cloud_inventory import CloudInventory
from oma_server.errors import Unavailable
from oma_server.pagination import page_of


def _inventory(cloud: Callable[[], CloudInventory | None]) -> CloudInventory:
    inventory = cloud()
    if inventory is None:
        raise Unavailable("the CloudStack connection is starting; retry in a moment", reason="NOT_READY")
    return inventory


class CloudServicer(cloud_pb2_grpc.CloudServiceServicer):
    def __init__(self, cloud: Callable[[], CloudInventory | None]) -> None:
        """`cloud` gives the inventory once the App built it (at start, with the CloudStack client)."""
        self.cloud = cloud

    async def ListZones(
        self, request: cloud_pb2.ListZonesRequest, context: grpc.aio.ServicerContext
    ) -> cloud_pb2.ListZonesResponse:
        zones, token = page_of(await _inventory(self.cloud).zones(), request.page_size, request.page_token)
        return cloud_pb2.ListZonesResponse(zones=[zone_to_proto(z) for z in zones], next_page_token=token)

    async def ListNetworks(
        self, request: cloud_pb2.ListNetworksRequest, context: grpc.aio.ServicerContext
    ) -> cloud_pb2.ListNetworksResponse:
        found = await _inventory(self.cloud).networks(request.zone_id)
        networks, token = page_of(found, request.page_size, request.page_token)
        return cloud_pb2.ListNetworksResponse(networks=[network_to_proto(n) for n in networks], next_page_token=token)

    async def ListServiceOfferings(
        self, request: cloud_pb2.ListServiceOfferingsRequest, context: grpc.aio.ServicerContext
    ) -> cloud_pb2.ListServiceOfferingsResponse:
        found = await _inventory(self.cloud).service_offerings()
        offerings, token = page_of(found, request.page_size, request.page_token)
        return cloud_pb2.ListServiceOfferingsResponse(
            service_offerings=[service_offering_to_proto(o) for o in offerings], next_page_token=token
        )

    async def ListDiskOfferings(
        self, request: cloud_pb2.ListDiskOfferingsRequest, context: grpc.aio.ServicerContext
    ) -> cloud_pb2.ListDiskOfferingsResponse:
        found = await _inventory(self.cloud).disk_offerings()
        offerings, token = page_of(found, request.page_size, request.page_token)
        return cloud_pb2.ListDiskOfferingsResponse(
            disk_offerings=[disk_offering_to_proto(o) for o in offerings], next_page_token=token
        )

    async def ListTemplates(
        self, request: cloud_pb2.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> cloud_pb2.ListTemplatesResponse:
        found = await _inventory(self.cloud).templates(request.zone_id)
        templates, token = page_of(found, request.page_size, request.page_token)
        return cloud_pb2.ListTemplatesResponse(
            templates=[template_to_proto(t) for t in templates], next_page_token=token
        )
