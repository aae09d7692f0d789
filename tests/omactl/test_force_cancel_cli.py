"""omactl jobs cancel --force as a real process: refused with a hint while the appliance may answer, done once it
is gone."""

from __future__ import annotations

import grpc

from oma_server.db.models import Appliance
from oma_server.server import OmaServer
from tests.factories import job_on_stream
from tests.omactl.conftest import assert_one_error_line, run_omactl, target_of
from tests.waiting import until


async def test_jobs_cancel_force(oma: OmaServer, channel: grpc.aio.Channel) -> None:
    app = oma.app
    target = target_of(oma)
    enrolled, job, stream = await job_on_stream(channel, app)
    refused = await run_omactl(target, "jobs", "cancel", job.id, "--force")
    assert_one_error_line(refused, "FAILED_PRECONDITION", "APPLIANCE_MAY_ANSWER", "without force")
    await stream.close()
    await until(
        lambda: app.db.run(lambda: Appliance.get_by_id(enrolled.appliance_id).connection_state == "disconnected"),
        "the appliance is marked disconnected",
    )
    forced = await run_omactl(target, "replicate", "cancel", job.id, "--force")
    assert forced.code == 0, forced
    assert f"Job {job.id} is cancelled without its appliance's confirmation" in forced.out
    log = await run_omactl(target, "jobs", "log", job.id)
    assert "force-cancelled: appliance" in log.out
