"""BandwidthService servicer, and the conversions of bandwidth limits (proto ↔ domain)."""

from __future__ import annotations

import grpc

from oma.v1 import bandwidth_pb2, bandwidth_pb2_grpc
from oma_server.api.convert import enum_name, enum_value, ts
from oma_server.bandwidth.store import BandwidthLimitStore, LimitSpec, LimitView, WindowSpec


def spec_of(spec: bandwidth_pb2.BandwidthLimitSpec) -> LimitSpec:
    return LimitSpec(
        target_kind=enum_name(bandwidth_pb2.BandwidthTargetKind, "BANDWIDTH_TARGET_KIND", spec.target.kind),
        target_id=spec.target.id,
        bytes_per_second=spec.bytes_per_second,
        windows=tuple(
            WindowSpec(tuple(int(d) for d in w.days), w.start, w.end, w.bytes_per_second) for w in spec.windows
        ),
        time_zone=spec.time_zone,
    )


def limit_to_proto(view: LimitView) -> bandwidth_pb2.BandwidthLimit:
    spec = view.spec
    return bandwidth_pb2.BandwidthLimit(
        id=view.row.id,
        spec=bandwidth_pb2.BandwidthLimitSpec(
            target=bandwidth_pb2.BandwidthTarget(
                kind=enum_value(bandwidth_pb2.BandwidthTargetKind, "BANDWIDTH_TARGET_KIND", spec.target_kind),  # type: ignore[arg-type]
                id=spec.target_id,
            ),
            bytes_per_second=spec.bytes_per_second,
            windows=[
                bandwidth_pb2.BandwidthWindow(
                    days=list(w.days),  # type: ignore[arg-type]
                    start=w.start,
                    end=w.end,
                    bytes_per_second=w.bytes_per_second,
                )
                for w in spec.windows
            ],
            time_zone=spec.time_zone,
        ),
        current_bytes_per_second=view.current_bytes_per_second,
        next_change_at=ts(view.next_change_at),
        created_at=ts(view.row.created_at),
        updated_at=ts(view.row.updated_at),
    )


class BandwidthServicer(bandwidth_pb2_grpc.BandwidthServiceServicer):
    def __init__(self, limits: BandwidthLimitStore) -> None:
        self.limits = limits

    async def SetBandwidthLimit(
        self, request: bandwidth_pb2.SetBandwidthLimitRequest, context: grpc.aio.ServicerContext
    ) -> bandwidth_pb2.SetBandwidthLimitResponse:
        view = await self.limits.set(spec_of(request.spec))
        return bandwidth_pb2.SetBandwidthLimitResponse(limit=limit_to_proto(view))

    async def GetBandwidthLimit(
        self, request: bandwidth_pb2.GetBandwidthLimitRequest, context: grpc.aio.ServicerContext
    ) -> bandwidth_pb2.GetBandwidthLimitResponse:
        return bandwidth_pb2.GetBandwidthLimitResponse(limit=limit_to_proto(await self.limits.get(request.id)))

    async def ListBandwidthLimits(
        self, request: bandwidth_pb2.ListBandwidthLimitsRequest, context: grpc.aio.ServicerContext
    ) -> bandwidth_pb2.ListBandwidthLimitsResponse:
        views, token = await self.limits.list_limits(request.page_size, request.page_token, request.target_id)
        return bandwidth_pb2.ListBandwidthLimitsResponse(
            limits=[limit_to_proto(v) for v in views], next_page_token=token
        )

    async def DeleteBandwidthLimit(
        self, request: bandwidth_pb2.DeleteBandwidthLimitRequest, context: grpc.aio.ServicerContext
    ) -> bandwidth_pb2.DeleteBandwidthLimitResponse:
        await self.limits.delete(request.id)
        return bandwidth_pb2.DeleteBandwidthLimitResponse()
