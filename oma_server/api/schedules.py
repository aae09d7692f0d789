"""ScheduleService servicer, and the conversions of schedules and RPOs (domain → proto)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from oma.v1 import schedule_pb2, schedule_pb2_grpc, vm_context_pb2
from oma_server.api.convert import enum_name, enum_value, rpo_to_proto, ts
from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import Schedule
from oma_server.schedules.rpo import rpo_of
from oma_server.schedules.store import ScheduleSpec, ScheduleStore


def spec_of(spec: schedule_pb2.ScheduleSpec) -> ScheduleSpec:
    return ScheduleSpec(
        name=spec.name,
        target_kind=enum_name(schedule_pb2.ScheduleTargetKind, "SCHEDULE_TARGET_KIND", spec.target.kind),
        target_id=spec.target.id,
        interval_s=spec.interval_seconds,
        cron=spec.cron,
        time_zone=spec.time_zone,
        jitter_s=spec.jitter_seconds,
        rpo_target_s=spec.rpo_target_seconds,
    )


def schedule_to_proto(row: Schedule) -> schedule_pb2.Schedule:
    return schedule_pb2.Schedule(
        id=row.id,
        spec=schedule_pb2.ScheduleSpec(
            name=row.name,
            target=schedule_pb2.ScheduleTarget(
                kind=enum_value(schedule_pb2.ScheduleTargetKind, "SCHEDULE_TARGET_KIND", row.target_kind),  # type: ignore[arg-type]
                id=row.target_id,
            ),
            interval_seconds=row.interval_seconds,
            cron=row.cron,
            time_zone=row.time_zone,
            jitter_seconds=row.jitter_seconds,
            rpo_target_seconds=row.rpo_target_seconds,
        ),
        paused=row.paused,
        next_slot_at=ts(row.next_slot_at),
        next_run_at=ts(row.next_run_at),
        last_run_at=ts(row.last_run_at),
        last_job_id=row.last_job_id,
        last_outcome=row.last_outcome,
        created_at=ts(row.created_at),
        updated_at=ts(row.updated_at),
    )


@dataclass(frozen=True)
class RpoReader:
    """What a VM's RPO is read from: the database and the clock."""

    db: Database
    clock: Clock


async def with_rpo(rpo: RpoReader, vms: list[vm_context_pb2.VmContext]) -> list[vm_context_pb2.VmContext]:
    """VM contexts with their RPO as of now (filled in place)."""
    views = await rpo.db.run(rpo_of, [vm.id for vm in vms], rpo.clock.now())
    for vm in vms:
        vm.rpo.CopyFrom(rpo_to_proto(views[vm.id]))
    return vms


class ScheduleServicer(schedule_pb2_grpc.ScheduleServiceServicer):
    def __init__(self, schedules: ScheduleStore) -> None:
        self.schedules = schedules

    async def CreateSchedule(
        self, request: schedule_pb2.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.CreateScheduleResponse:
        row = await self.schedules.create(spec_of(request.spec), request.request_id)
        return schedule_pb2.CreateScheduleResponse(schedule=schedule_to_proto(row))

    async def GetSchedule(
        self, request: schedule_pb2.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.GetScheduleResponse:
        return schedule_pb2.GetScheduleResponse(schedule=schedule_to_proto(await self.schedules.get(request.id)))

    async def ListSchedules(
        self, request: schedule_pb2.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.ListSchedulesResponse:
        rows, token = await self.schedules.list_schedules(request.page_size, request.page_token, request.target_id)
        return schedule_pb2.ListSchedulesResponse(schedules=[schedule_to_proto(r) for r in rows], next_page_token=token)

    async def UpdateSchedule(
        self, request: schedule_pb2.UpdateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.UpdateScheduleResponse:
        row = await self.schedules.update(request.id, spec_of(request.spec))
        return schedule_pb2.UpdateScheduleResponse(schedule=schedule_to_proto(row))

    async def DeleteSchedule(
        self, request: schedule_pb2.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.DeleteScheduleResponse:
        await self.schedules.delete(request.id)
        return schedule_pb2.DeleteScheduleResponse()

    async def PauseSchedule(
        self, request: schedule_pb2.PauseScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.PauseScheduleResponse:
        return schedule_pb2.PauseScheduleResponse(schedule=schedule_to_proto(await self.schedules.pause(request.id)))

    async def ResumeSchedule(
        self, request: schedule_pb2.ResumeScheduleRequest, context: grpc.aio.ServicerContext
    ) -> schedule_pb2.ResumeScheduleResponse:
        row = await self.schedules.resume(request.id)
        return schedule_pb2.ResumeScheduleResponse(schedule=schedule_to_proto(row))
