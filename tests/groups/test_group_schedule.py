"""A machine group's schedule on a ManualClock: each slot syncs every member within the limits, the slot waits whole
for a member that waits for a place, and the members' RPO is the group schedule's."""

from __future__ import annotations

from pathlib import Path

from oma.v1 import schedule_pb2
from tests.groups.helpers import create_group
from tests.schedules.helpers import Api, Vma, oma_on_clock, seconds_after_t0, step

HOUR = 3600
GROUP = schedule_pb2.SCHEDULE_TARGET_KIND_MACHINE_GROUP


async def create_group_schedule(api: Api, group_id: str) -> schedule_pb2.Schedule:
    target = schedule_pb2.ScheduleTarget(kind=GROUP, id=group_id)
    request = schedule_pb2.CreateScheduleRequest(
        spec=schedule_pb2.ScheduleSpec(target=target, interval_seconds=HOUR, rpo_target_seconds=2 * HOUR)
    )
    return (await api.schedules.CreateSchedule(request)).schedule


async def test_a_group_schedule_syncs_every_member_and_its_slot_waits_for_the_last(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path, max_running_jobs_per_appliance=1) as (server, clock, api):
        a, b = await Vma.connect(api.channel), await Vma.connect(api.channel)
        vms = {
            "db-01": await api.register(a.enrolled, "db-01"),
            "app-01": await api.register(a.enrolled, "app-01"),
            "web-01": await api.register(b.enrolled, "web-01"),
        }
        group = await create_group(api.channel, "shop", {vms["db-01"]: 0, vms["app-01"]: 1, vms["web-01"]: 1})
        schedule = await create_group_schedule(api, group.id)
        assert seconds_after_t0(schedule.next_slot_at) == HOUR

        await step(server, clock, HOUR)  # the slot: one sync per appliance may run, so one of a's two VMs waits
        started = {name for name, vm_id in vms.items() if await api.jobs(vm_id)}
        assert len(started) == 2 and "web-01" in started
        waiting = await api.schedule(schedule.id)
        assert "2 of 3 VMs started, 1 waiting" in waiting.last_outcome
        assert "1 of 1 replication jobs run on appliance " + a.enrolled.appliance_id in waiting.last_outcome
        assert waiting.next_run_at.ToDatetime() <= clock.now()  # the slot is kept for the VM that waits

        await a.complete(server, await a.command(), clock)  # a's place frees: its other VM starts, same slot
        await server.app.scheduler.pass_after_now()
        jobs = {name: await api.jobs(vm_id) for name, vm_id in vms.items()}
        assert all(len(j) == 1 for j in jobs.values()), jobs  # each member once: none skipped, none twice
        done = await api.schedule(schedule.id)
        assert seconds_after_t0(done.next_slot_at) == 2 * HOUR
        assert "3 of 3 VMs started" in done.last_outcome and done.last_job_id
        for job in jobs["web-01"]:  # it ran through the wait: the slot's later passes did not call it skipped
            assert not any(e.step == "schedule" and "skipped" in e.message for e in await api.log(job.id))

        await a.complete(server, await a.command(), clock)
        await b.complete(server, await b.command(), clock)
        await server.app.scheduler.pass_after_now()
        for vm_id in vms.values():
            rpo = (await api.vm(vm_id)).rpo
            assert rpo.schedule_id == schedule.id and rpo.target_seconds == 2 * HOUR
            assert rpo.status == schedule_pb2.RPO_STATUS_MET, rpo
        for vma in (a, b):
            await vma.close()
