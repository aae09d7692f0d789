"""The HTTP listener: off by default; /metrics moves during a real replication and failover; the SSE bridge of the
watch streams resumes from Last-Event-ID; the dashboard's JSON; the sample alert rules name real metrics."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml

from oma.v1 import failover_pb2, replication_pb2, replication_pb2_grpc
from oma_server.app import App
from oma_server.errors import InvalidArgument
from oma_server.server import OmaServer
from tests.conftest import REPO, make_settings
from tests.factories import inventory
from tests.failover.helpers import TEST, failover_stub, get_vm, map_network, replicate, sim_of, start_oma
from tests.tls import make_pki
from tests.web.conftest import EventStream, Web, bearer, value
from vma.v1 import stream_pb2

ALERTS = REPO / "docs" / "prometheus-alerts.yml"


async def test_the_http_listener_is_off_by_default(tmp_path: Path) -> None:
    assert make_settings(tmp_path).http_listen == ""
    assert OmaServer(App(make_settings(tmp_path))).http is None


async def test_metrics_move_during_a_replication_and_a_failover(web: Web, tmp_path: Path) -> None:
    before = await web.scrape()
    assert value(before, "oma_replication_jobs") == 0
    replicated = await replicate(web.channel, tmp_path, inventory(disk_mib=(4, 2)))
    during = await web.scrape()
    appliance = replicated.enrolled.appliance_id
    # the replication's messages were received, stored and acked; its CloudStack calls timed
    assert value(during, "oma_ack_latency_seconds_count") > value(before, "oma_ack_latency_seconds_count")
    assert value(during, "oma_db_transaction_seconds_count") > value(before, "oma_db_transaction_seconds_count")
    assert value(during, "oma_cloudstack_request_seconds_count", command="createVolume") >= 2
    assert value(during, "oma_replication_jobs", status="completed") == 1
    assert value(during, "oma_stream_sessions") == 1
    assert value(during, "oma_appliance_connected", appliance_id=appliance) == 1
    assert value(during, "oma_appliances", connection_state="connected") == 1
    assert value(during, "oma_nbd_exports") >= 2
    recovery_point = value(during, "oma_vm_recovery_point_timestamp_seconds", vm_context_id=replicated.vm_id)
    assert time.time() - 600 < recovery_point <= time.time() + 1, "the VM's recovery point is its last verified sync"
    rpo = (await get_vm(web.channel, replicated.vm_id)).rpo  # the same point as the RPO's (verified syncs only)
    assert rpo.recovery_point_job_id and recovery_point == pytest.approx(
        rpo.recovery_point.seconds + rpo.recovery_point.nanos / 1e9, abs=1e-3
    )

    # Progress reports and bytes copied by the appliance
    job = (
        await jobs_stub(web).StartReplication(replication_pb2.StartReplicationRequest(vm_context_id=replicated.vm_id))
    ).job
    command = (await replicated.stream.recv_until("command", timeout=20)).command.start_replication
    total = sum(d.capacity_bytes for d in command.disks)
    reports_before = value(await web.scrape(), "oma_progress_reports_total")
    seq = command.last_applied_sequence + 1
    await replicated.stream.send(
        event=stream_pb2.JobEvent(job_id=job.id, sequence=seq, started=stream_pb2.JobStarted())
    )
    await replicated.stream.recv_until("ack", timeout=10, job_id=job.id, sequence=seq)
    seq += 1
    await replicated.stream.send(
        progress=stream_pb2.ProgressReport(job_id=job.id, sequence=seq, bytes_done=total // 2, bytes_total=total)
    )
    await replicated.stream.recv_until("ack", timeout=10, job_id=job.id, sequence=seq)
    moved = await web.scrape()
    assert value(moved, "oma_progress_reports_total") == reports_before + 1
    assert value(moved, "oma_bytes_copied_total", appliance_id=appliance) >= total // 2
    open_job = value(moved, "oma_replication_job_updated_timestamp_seconds", job_id=job.id, status="replicating")
    assert open_job > 0, "an open job's last change is exposed (the stuck-job alert reads it)"

    # A failover's steps are timed by kind, step and outcome
    for disk in command.disks:
        seq += 1
        done = stream_pb2.DiskCompleted(disk_id=disk.disk_id, change_id=f"cid-2-{disk.disk_id}")
        await replicated.stream.send(event=stream_pb2.JobEvent(job_id=job.id, sequence=seq, disk_completed=done))
    seq += 1
    await replicated.stream.send(
        event=stream_pb2.JobEvent(job_id=job.id, sequence=seq, completed=stream_pb2.JobCompleted())
    )
    await replicated.stream.recv_until("ack", timeout=10, job_id=job.id, sequence=seq)
    await map_network(web.channel, sim_of(web.server), replicated.vm_id)
    stub = failover_stub(web.channel)
    started = await stub.StartFailover(failover_pb2.StartFailoverRequest(vm_context_id=replicated.vm_id, kind=TEST))
    final = await web.server.app.failover.wait(started.job.id, timeout_s=60)  # type: ignore[union-attr]
    assert final.status.value == "completed"
    after = await web.scrape()
    steps = {dict(ls)["step"] for (n, ls), v in after.items() if n == "oma_failover_step_seconds_count" and v}
    assert {"snapshot_volumes", "deploy_vm"} <= steps, steps
    assert value(after, "oma_failover_step_seconds_count", kind="test", outcome="completed") >= len(steps)
    assert value(after, "oma_failover_jobs", kind="test", status="completed") == 1

    # The appliance goes away: its gauge drops
    await replicated.stream.close()
    await wait_for(lambda: web.server.app.hub.sessions == {})
    gone = await web.scrape()
    assert value(gone, "oma_appliance_connected", appliance_id=appliance) == 0
    assert value(gone, "oma_stream_sessions") == 0


def jobs_stub(web: Web) -> replication_pb2_grpc.ReplicationServiceStub:
    return replication_pb2_grpc.ReplicationServiceStub(web.channel)


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_events_resume_from_last_event_id(web: Web, tmp_path: Path) -> None:
    """The SSE bridge: snapshot, SYNCED with an id, changes with ids; a reconnect with Last-Event-ID gets exactly
    the changes after it, no snapshot; a revision older than the history answers `reset` and a fresh snapshot."""
    replicated = await replicate(web.channel, tmp_path, inventory(disk_mib=(2,)))
    async with web.session.get(f"{web.base}/api/events") as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = EventStream(response)
        first_id, snapshot = await stream.next_update()
        assert snapshot["kind"] == "UPDATE_KIND_SNAPSHOT" and first_id is None, "a snapshot is no resume point"
        assert snapshot["replicationJob"]["status"] == "REPLICATION_JOB_STATUS_COMPLETED"  # type: ignore[index]
        synced_id, synced = await stream.next_update()
        assert synced["kind"] == "UPDATE_KIND_SYNCED" and synced_id == str(synced.get("revision", "0"))
    # Changes while nobody listens: a new job of the VM.
    stub = jobs_stub(web)
    job = (await stub.StartReplication(replication_pb2.StartReplicationRequest(vm_context_id=replicated.vm_id))).job
    await replicated.stream.recv_until("command", timeout=20)  # provisioned and handed to the appliance
    async with web.session.get(f"{web.base}/api/events", headers={"Last-Event-ID": synced_id}) as response:
        stream = EventStream(response)
        change_id, change = await stream.next_update()
        assert change["kind"] == "UPDATE_KIND_CHANGE", "a resumed stream replays changes, no snapshot"
        assert int(change_id or 0) > int(synced_id or 0)
        assert change["replicationJob"]["id"] == job.id  # type: ignore[index]
    # A revision below what the history holds: reset, then a snapshot again.
    web.server.app.watch._floor = web.server.app.watch.published  # as if the history had been compacted
    async with web.session.get(f"{web.base}/api/events", headers={"Last-Event-ID": "1"}) as response:
        stream = EventStream(response)
        reset = await stream.next()
        assert reset["event"] == "reset" and "list the jobs again" in reset["data"]
        _, again = await stream.next_update()
        assert again["kind"] == "UPDATE_KIND_SNAPSHOT"
    await replicated.stream.close()


async def test_overview_and_job_log_json(web: Web, tmp_path: Path) -> None:
    replicated = await replicate(web.channel, tmp_path, inventory(disk_mib=(2,), name="web-json"))
    async with web.session.get(f"{web.base}/api/overview") as response:
        overview = await response.json()
    (vm,) = overview["vms"]
    assert vm["name"] == "web-json" and vm["status"] == "VM_CONTEXT_STATUS_READY_FOR_FAILOVER"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", vm["recoveryPoint"]), vm["recoveryPoint"]
    # the recovery point is the RPO's: the start of the last completed and verified sync
    assert vm["rpo"]["recoveryPoint"] == vm["recoveryPoint"] and vm["rpo"]["status"] == "RPO_STATUS_NO_TARGET"
    assert vm["rpo"]["recoveryPointJobId"] == vm["lastCompletedJobId"]
    (appliance,) = overview["appliances"]
    assert appliance["connectionState"] == "CONNECTION_STATE_CONNECTED"
    job_id = vm["lastCompletedJobId"]
    async with web.session.get(f"{web.base}/api/jobs/{job_id}/log") as response:
        entries = (await response.json())["entries"]
    assert any(e["step"] == "create_volume" for e in entries), [e["step"] for e in entries]
    async with web.session.get(f"{web.base}/api/jobs/no-such-job/log") as response:
        assert response.status == 200 and (await response.json()) == {"entries": []}
    await replicated.stream.close()


async def test_the_listener_serves_https_with_a_certificate(tmp_path: Path) -> None:
    pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
    server = await start_oma(tmp_path, http_listen="127.0.0.1:0", http_tls_cert=pki.cert, http_tls_key=pki.key)
    try:
        assert server.http is not None
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        async with aiohttp.ClientSession(headers=bearer(server)) as session:
            async with session.get(f"https://127.0.0.1:{server.http.port}/metrics", ssl=trusted) as response:
                assert response.status == 200 and "oma_replication_jobs" in await response.text()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://127.0.0.1:{server.http.port}/metrics")  # the system's CAs do not know it
    finally:
        await server.stop(grace=0.2)


def test_tls_flags_go_together(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, http_listen="127.0.0.1:0", http_tls_cert=tmp_path / "cert.pem")
    with pytest.raises(InvalidArgument, match="--http-tls-cert and --http-tls-key go together"):
        settings.validate()


def test_alert_rules_name_metrics_the_oma_exposes() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"OmaRecoveryPointObjectiveBreached", "OmaApplianceDisconnected", "OmaReplicationJobStuck"} <= set(alerts)
    source = (REPO / "oma_server" / "metrics.py").read_text()
    for name, rule in alerts.items():
        assert rule["annotations"]["summary"] and rule["labels"]["severity"], name
        for metric in set(re.findall(r"\boma_[a-z_]+", rule["expr"])):
            assert f'"{metric}"' in source, f"{name} reads {metric}, which oma_server/metrics.py does not define"
