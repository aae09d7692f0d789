"""Schedules through the real API: an OMA with the CloudStack simulator and nbd-server, a played appliance, and a
ManualClock that moves hours of slots in moments (no test sleeps through real minutes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oma.v1 import job_pb2, job_pb2_grpc, replication_pb2, schedule_pb2, vm_context_pb2
from oma_server.clock import ManualClock
from oma_server.schedules.leadership import Leadership
from oma_server.security.tokens import read_admin_token
from tests.clients import oma_channel
from tests.factories import enroll
from tests.pg import PostgresServer
from tests.schedules.helpers import T0, Api, Vma, oma_on_clock, restart_oma, seconds_after_t0, start_oma, step
from vma_client_stubs.errors import error_info_of

pytestmark = pytest.mark.nbd
HOUR = 3600
INITIAL = replication_pb2.REPLICATION_JOB_KIND_INITIAL
INCREMENTAL = replication_pb2.REPLICATION_JOB_KIND_INCREMENTAL
MET = schedule_pb2.RPO_STATUS_MET
BREACHED = schedule_pb2.RPO_STATUS_BREACHED


async def test_a_schedule_fires_at_its_slots_skips_an_overlap_and_keeps_the_rpo(
    tmp_path: Path, database_url: str
) -> None:
    async with oma_on_clock(tmp_path, database_url) as (server, clock, api):
        channel = api.channel
        vma = await Vma.connect(channel)
        vm_id = await api.register(vma.enrolled, "db-01")
        before = await api.vm(vm_id)
        assert before.rpo.status == schedule_pb2.RPO_STATUS_NO_TARGET
        created = await api.create(vm_id, name="hourly", interval_seconds=HOUR, rpo_target_seconds=2 * HOUR)
        assert seconds_after_t0(created.next_slot_at) == HOUR == seconds_after_t0(created.next_run_at)
        fresh = await api.vm(vm_id)
        assert fresh.rpo.status == BREACHED and "no completed and verified sync yet" in fresh.rpo.reason
        assert fresh.rpo.schedule_id == created.id and seconds_after_t0(fresh.rpo.next_sync_at) == HOUR

        await step(server, clock, HOUR - 1)  # a second before the slot: nothing
        assert await api.jobs(vm_id) == []
        await step(server, clock, 1)  # the slot: the first sync is an initial
        [first] = await api.jobs(vm_id)
        assert first.kind == INITIAL
        schedule = await api.schedule(created.id)
        assert schedule.last_job_id == first.id and seconds_after_t0(schedule.next_slot_at) == 2 * HOUR
        assert f"started initial job {first.id}" in schedule.last_outcome
        command = await vma.command()
        assert command.job_id == first.id
        await vma.complete(server, command, clock)
        point = await api.vm(vm_id)
        assert point.rpo.status == MET and point.rpo.recovery_point_job_id == first.id
        assert seconds_after_t0(point.rpo.recovery_point) == HOUR  # the sync's start: its snapshot
        assert point.rpo.current_seconds == 60 and point.rpo.target_seconds == 2 * HOUR

        await step(server, clock, HOUR - 60)  # the second slot: an incremental
        jobs = await api.jobs(vm_id)
        assert [j.kind for j in jobs] == [INITIAL, INCREMENTAL]
        second = jobs[1]
        await vma.command()
        await step(server, clock, HOUR)  # the third slot comes while the second sync still runs: skipped
        assert [j.id for j in await api.jobs(vm_id)] == [first.id, second.id]
        schedule = await api.schedule(created.id)
        assert f"incremental job {second.id} still runs" in schedule.last_outcome
        assert seconds_after_t0(schedule.next_slot_at) == 4 * HOUR
        skipped = [e for e in await api.log(second.id) if e.step == "schedule"]
        assert skipped and skipped[-1].status == job_pb2.JOB_LOG_STATUS_SKIPPED
        await vma.close()


async def test_a_breach_is_a_status_with_a_reason_in_the_vm_and_its_watchers(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path) as (server, clock, api):
        channel = api.channel
        vma = await Vma.connect(channel)
        vm_id = await api.register(vma.enrolled, "web-01")
        created = await api.create(vm_id, interval_seconds=HOUR, rpo_target_seconds=90 * 60)
        await step(server, clock, HOUR)
        await vma.complete(server, await vma.command(), clock)
        watch = job_pb2_grpc.JobServiceStub(channel).WatchJobs(job_pb2.WatchJobsRequest(vm_context_id=vm_id))
        snapshot = await anext_rpo(watch)
        assert snapshot.status == MET and snapshot.vm_context_id == vm_id

        await api.schedules.PauseSchedule(schedule_pb2.PauseScheduleRequest(id=created.id))
        await step(server, clock, 3 * HOUR)  # paused through three slots: no sync, the RPO ages past its target
        assert len(await api.jobs(vm_id)) == 1
        vm = await api.vm(vm_id)
        assert vm.rpo.status == BREACHED and vm.rpo.schedule_paused
        assert vm.rpo.current_seconds == 3 * HOUR + 60  # from its start (its snapshot), a minute before it ended
        assert "over the target of 1h 30m" in vm.rpo.reason and "the schedule is paused" in vm.rpo.reason
        breached = await anext_rpo(watch, status=BREACHED)
        assert "the schedule is paused" in breached.reason and not breached.HasField("next_sync_at")

        resumed = (await api.schedules.ResumeSchedule(schedule_pb2.ResumeScheduleRequest(id=created.id))).schedule
        # from the next slot after now: the slots missed while paused are not made up
        assert seconds_after_t0(resumed.next_slot_at) == 5 * HOUR
        assert len(await api.jobs(vm_id)) == 1
        await step(server, clock, resumed.next_slot_at.ToDatetime().timestamp() - clock.now().timestamp())
        assert len(await api.jobs(vm_id)) == 2
        await vma.complete(server, await vma.command(), clock)
        await step(server, clock, 1)
        assert (await anext_rpo(watch, status=MET)).recovery_point_job_id == (await api.jobs(vm_id))[1].id
        watch.cancel()
        await vma.close()


async def anext_rpo(watch: object, status: int | None = None) -> schedule_pb2.VmRpo:
    """The next vm_rpo update of a WatchJobs stream (with that status)."""
    while True:
        response = await watch.read()  # type: ignore[attr-defined]
        assert response is not grpc.aio.EOF
        update = response.update
        if update.WhichOneof("job") == "vm_rpo" and (status is None or update.vm_rpo.status == status):
            return update.vm_rpo  # type: ignore[no-any-return]


async def test_a_restart_keeps_schedules_and_catches_up_with_one_sync(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    server = await start_oma(tmp_path, clock)
    try:
        async with oma_channel(server) as channel:
            api = Api(channel)
            enrolled = await enroll(channel)
            vm_id = await api.register(enrolled, "app-01")
            created = await api.create(vm_id, interval_seconds=15 * 60, jitter_seconds=120)
            first_slot = created.next_slot_at.ToDatetime()
            assert 15 * 60 <= seconds_after_t0(created.next_run_at) <= 17 * 60
        # down for ten hours: forty slots pass
        server = await restart_oma(server, clock, downtime_s=10 * HOUR)
        async with oma_channel(server) as channel:
            api = Api(channel)
            await server.app.scheduler.pass_after_now()
            jobs = await api.jobs(vm_id)
            assert len(jobs) == 1 and jobs[0].kind == INITIAL  # one sync, not forty
            schedule = await api.schedule(created.id)
            assert schedule.last_job_id == jobs[0].id
            assert f"slot of {first_slot:%Y-%m-%d %H:%M:%S}" in schedule.last_outcome  # the persisted slot
            next_slot = schedule.next_slot_at.ToDatetime()
            assert 0 < (next_slot - clock.now()).total_seconds() <= 15 * 60  # the next one after now
            assert (next_slot - T0).total_seconds() % (15 * 60) == 0  # still on the schedule's grid
            await server.app.scheduler.pass_after_now()
            assert len(await api.jobs(vm_id)) == 1
    finally:
        await server.stop(grace=0.2)


async def test_limits_queue_the_oldest_recovery_point_first(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path, max_running_jobs=3, max_running_jobs_per_appliance=1) as (server, clock, api):
        channel = api.channel
        a, b, c = [await Vma.connect(channel) for _ in range(3)]
        vms: dict[str, str] = {}
        # recovery points ten minutes apart, oldest first (operator-started syncs); "never" has none
        for name, vma in (("older", a), ("other", b), ("newer", a), ("c1", c), ("c2", c)):
            vms[name] = await api.register(vma.enrolled, name)
            await api.start(vms[name])
            await vma.complete(server, await vma.command(), clock)
            clock.advance(9 * 60)
        vms["never"] = await api.register(b.enrolled, "never")
        schedules = {name: (await api.create(vm_id, interval_seconds=HOUR)).id for name, vm_id in vms.items()}

        async def started() -> set[str]:
            return {
                name
                for name, vm_id in vms.items()
                if any(j.kind == INCREMENTAL or name == "never" for j in await api.jobs(vm_id))
            }

        await step(server, clock, HOUR)  # every schedule is due at once
        # in RPO order: never (b), older (a), other (b is busy), newer (a is busy), c1 (c), c2 (three run in all)
        assert await started() == {"never", "older", "c1"}
        outcomes = {name: (await api.schedule(schedules[name])).last_outcome for name in ("other", "newer", "c2")}
        assert "waiting: 1 of 1 replication jobs run on appliance " + b.enrolled.appliance_id in outcomes["other"]
        assert "waiting: 1 of 1 replication jobs run on appliance " + a.enrolled.appliance_id in outcomes["newer"]
        assert "waiting: 3 of 3 replication jobs run (--max-running-jobs)" in outcomes["c2"]
        waiting = await api.schedule(schedules["newer"])
        assert waiting.next_run_at.ToDatetime() <= clock.now()  # still due: it waits, its slot is not skipped

        await a.complete(server, await a.command(), clock)  # a's place frees: its queued schedule starts
        await server.app.scheduler.pass_after_now()
        assert await started() == {"never", "older", "c1", "newer"}
        await b.complete(server, await b.command(), clock)  # b's: "other" before c2 (older recovery point)
        await server.app.scheduler.pass_after_now()
        assert await started() == {"never", "older", "c1", "newer", "other"}
        running = [j for vm_id in vms.values() for j in await api.jobs(vm_id) if not j.HasField("finished_at")]
        assert len(running) == 3
        for vma in (a, b, c):
            await vma.close()


async def test_cron_in_a_time_zone_across_dst_through_the_api(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path) as (server, clock, api):
        channel = api.channel
        enrolled = await enroll(channel)
        vm_id = await api.register(enrolled, "berlin-01")
        created = await api.create(vm_id, cron="0 9 * * *", time_zone="Europe/Berlin", rpo_target_seconds=86400 * 2)
        assert created.next_slot_at.ToDatetime().isoformat() == "2026-03-28T08:00:00"  # 09:00 CET
        await step(server, clock, (created.next_slot_at.ToDatetime() - T0).total_seconds())
        [job] = await api.jobs(vm_id)
        schedule = await api.schedule(created.id)
        assert schedule.last_job_id == job.id
        assert schedule.next_slot_at.ToDatetime().isoformat() == "2026-03-29T07:00:00"  # 09:00 CEST


async def test_schedules_are_validated_whole_and_managed(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path) as (_server, clock, api):
        channel = api.channel
        enrolled = await enroll(channel)
        vm_id = await api.register(enrolled, "v-01")
        bad = [
            ({"cron": "0 25 * * *"}, "spec.cron", "CRON_INVALID"),
            ({"cron": "0 9 * * *", "time_zone": "Europe/Atlantis"}, "spec.time_zone", "TIME_ZONE_UNKNOWN"),
            ({"interval_seconds": 59}, "spec.interval_seconds", "SCHEDULE_TOO_FREQUENT"),
            ({"interval_seconds": 600, "jitter_seconds": 600}, "spec.jitter_seconds", "JITTER_TOO_LARGE"),
            ({"interval_seconds": 600, "rpo_target_seconds": 0}, "spec.rpo_target_seconds", "RPO_TARGET_MISSING"),
            ({"interval_seconds": 600, "cron": "0 * * * *"}, "spec.interval_seconds", "SCHEDULE_TIMING_INVALID"),
        ]
        for spec, field, reason in bad:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await api.create(vm_id, **spec)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, spec
            info = error_info_of(error.value)
            assert info is not None and info.reason == reason and info.metadata["field"] == field, spec
            assert field in (error.value.details() or "")
        listed = await api.schedules.ListSchedules(schedule_pb2.ListSchedulesRequest())
        assert list(listed.schedules) == []  # nothing of a refused request was stored

        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.create("no-such-vm", interval_seconds=600)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        created = await api.create(vm_id, interval_seconds=600)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.create(vm_id, interval_seconds=900)
        assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_info_of(error.value).reason == "SCHEDULE_EXISTS"  # type: ignore[union-attr]

        again = schedule_pb2.CreateScheduleRequest(spec=created.spec, request_id="create-1")
        await api.schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(id=created.id))
        made = (await api.schedules.CreateSchedule(again)).schedule
        assert (await api.schedules.CreateSchedule(again)).schedule.id == made.id  # idempotent by request_id

        clock.advance(300)
        spec = schedule_pb2.ScheduleSpec(cron="*/30 * * * *", rpo_target_seconds=HOUR, name="half-hourly")
        updated = (
            await api.schedules.UpdateSchedule(schedule_pb2.UpdateScheduleRequest(id=made.id, spec=spec))
        ).schedule
        assert updated.spec.cron == "*/30 * * * *" and updated.spec.target.id == vm_id
        assert updated.next_slot_at.ToDatetime().isoformat() == "2026-03-27T12:30:00"
        moved = schedule_pb2.ScheduleSpec(
            cron="*/30 * * * *",
            rpo_target_seconds=HOUR,
            target=schedule_pb2.ScheduleTarget(kind=schedule_pb2.SCHEDULE_TARGET_KIND_VM_CONTEXT, id="other"),
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.schedules.UpdateSchedule(schedule_pb2.UpdateScheduleRequest(id=made.id, spec=moved))
        assert error_info_of(error.value).reason == "SCHEDULE_TARGET_IMMUTABLE"  # type: ignore[union-attr]
        paused = (await api.schedules.PauseSchedule(schedule_pb2.PauseScheduleRequest(id=made.id))).schedule
        assert paused.paused and not paused.HasField("next_run_at")
        vm = await api.vm(vm_id)
        assert vm.rpo.schedule_paused and not vm.rpo.HasField("next_sync_at")
        await api.schedules.DeleteSchedule(schedule_pb2.DeleteScheduleRequest(id=made.id))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.schedule(made.id)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        listed_vms = await vm_context_stub_list(channel)
        assert [v.rpo.status for v in listed_vms] == [schedule_pb2.RPO_STATUS_NO_TARGET]


async def vm_context_stub_list(channel: grpc.aio.Channel) -> list[vm_context_pb2.VmContext]:
    from oma.v1 import vm_context_pb2_grpc

    stub = vm_context_pb2_grpc.VmContextServiceStub(channel)
    return list((await stub.ListVmContexts(vm_context_pb2.ListVmContextsRequest())).vm_contexts)


async def test_metrics_show_each_scheduled_vms_rpo_against_its_target(tmp_path: Path) -> None:
    async with oma_on_clock(tmp_path, http_listen="127.0.0.1:0") as (server, clock, api):
        vma = await Vma.connect(api.channel)
        vm_id = await api.register(vma.enrolled, "metrics-01")
        await api.create(vm_id, interval_seconds=HOUR, rpo_target_seconds=2 * HOUR)
        assert server.http is not None
        # a viewer's token is what /metrics asks for once it is behind tokens (issue #17); unused before
        token = read_admin_token(server.app.settings.data_dir)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

            async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                async with session.get(f"http://127.0.0.1:{server.http.port}/metrics") as response:  # type: ignore[union-attr]
                    text = await response.text()
                return {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                }

            labels = (("vm", "metrics-01"), ("vm_context_id", vm_id))
            before = await scrape()
            assert before[("oma_vm_rpo_target_seconds", labels)] == 2 * HOUR
            assert before[("oma_vm_rpo_breached", labels)] == 1  # no verified sync yet
            await step(server, clock, HOUR)
            await vma.complete(server, await vma.command(), clock)
            after = await scrape()
            assert after[("oma_vm_rpo_breached", labels)] == 0
            assert after[("oma_vm_rpo_seconds", labels)] == 60
        await vma.close()


@pytest.mark.postgres
async def test_a_process_that_does_not_lead_the_scheduler_still_tells_its_watchers_the_rpo(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Several OMA processes: only the scheduler's leader starts syncs, but every process's watchers follow the
    RPOs — a process that does not lead reads them from the database at each tick and publishes what changed."""
    url = postgres.create_database()
    elsewhere = Leadership(url, "postgresql")  # another OMA process leads the scheduler
    assert elsewhere.try_lead()
    try:
        async with oma_on_clock(tmp_path, url) as (server, clock, api):
            vma = await Vma.connect(api.channel)
            vm_id = await api.register(vma.enrolled, "web-01")
            created = await api.create(vm_id, interval_seconds=HOUR, rpo_target_seconds=90 * 60)
            watch = job_pb2_grpc.JobServiceStub(api.channel).WatchJobs(job_pb2.WatchJobsRequest(vm_context_id=vm_id))
            assert "no completed and verified sync yet" in (await anext_rpo(watch, status=BREACHED)).reason
            await api.schedules.PauseSchedule(schedule_pb2.PauseScheduleRequest(id=created.id))
            await step(server, clock, 2 * HOUR)
            assert await api.jobs(vm_id) == []  # this process does not start syncs: it does not lead
            paused = await asyncio.wait_for(anext_rpo(watch, status=BREACHED), timeout=10)
            assert "the schedule is paused" in paused.reason
            watch.cancel()
            await vma.close()
    finally:
        elsewhere.release()
