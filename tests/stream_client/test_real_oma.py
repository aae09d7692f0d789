"""The stream client against the real in-process OMA (SQLite): a whole job, restarts of both sides, auth, rejects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from oma.common.v1 import jobs_pb2
from oma.v1 import replication_pb2
from oma_server.app import App
from oma_server.db.models import ChangeIdRecord
from oma_server.ports import free_port
from oma_server.security.tokens import read_admin_token
from oma_server.server import OmaServer
from tests.clients import ca_file, process_channel, process_endpoint
from tests.conftest import make_settings
from tests.factories import seed_job
from vma.v1 import stream_pb2
from vma_client_stubs.operator_client import Enrollment, OperatorClient, TlsConfig
from vma_client_stubs.stream_client import AuthenticationError, StreamClient

COMPLETED = replication_pb2.REPLICATION_JOB_STATUS_COMPLETED


class Oma:
    """An in-process OMA on a fixed port, restartable on the same data (SQLite file)."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'oma.db'}")
        self.settings.listen = f"127.0.0.1:{free_port()}"
        self.server: OmaServer | None = None

    @property
    def target(self) -> str:
        return self.settings.listen

    def tls(self) -> TlsConfig:
        """What an SDK user gives the OperatorClient: the OMA's CA."""
        return TlsConfig(ca=ca_file(self.settings.data_dir).read_bytes())

    def token(self) -> str:
        """The initial admin token this OMA's first start wrote."""
        return read_admin_token(self.settings.data_dir)

    def channel(self) -> grpc.aio.Channel:
        return process_channel(self.settings.data_dir, self.target)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS verified against the server's CA (the same across restarts: it lives in the data dir)."""
        return process_endpoint(self.settings.data_dir, self.target).credentials()

    @property
    def app(self) -> App:
        assert self.server is not None
        return self.server.app

    async def start(self) -> None:
        self.server = OmaServer(App(self.settings))
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0.2)
            self.server = None


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[Oma]:
    server = Oma(tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def operator(oma: Oma) -> AsyncIterator[OperatorClient]:
    async with OperatorClient(oma.target, tls=oma.tls(), token=oma.token()) as client:
        yield client


class MiniAgent:
    """The smallest honest VMA: accepts start_replication at once and reports a (simulated) copy separately."""

    def __init__(self, client: StreamClient) -> None:
        self.client = client
        self.runs: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.resume = asyncio.Event()  # the copy pauses after its first report until this is set
        self.resume.set()
        self.paused = asyncio.Event()
        client.on_command("start_replication", self.start_replication)

    async def start_replication(self, command: stream_pb2.Command) -> stream_pb2.CommandResult:
        self.runs.append(command.command_id)
        self.tasks.append(asyncio.create_task(self.copy(command.start_replication)))
        return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, detail="copy started")

    async def copy(self, start: stream_pb2.StartReplicationCommand) -> None:
        job_id = start.job_id
        total = sum(d.capacity_bytes for d in start.disks)
        await self.client.emit_event(
            stream_pb2.JobEvent(job_id=job_id, started=stream_pb2.JobStarted(source_snapshot="snap-1"))
        )
        for done in (total // 4, total // 2):
            await self.client.report_progress(self.report(start, done))
            self.paused.set()
            await self.resume.wait()
        for disk in start.disks:
            await self.client.emit_event(
                stream_pb2.JobEvent(
                    job_id=job_id,
                    disk_completed=stream_pb2.DiskCompleted(
                        disk_id=disk.disk_id,
                        change_id=f"cid-{disk.disk_id}",
                        bytes_copied=disk.capacity_bytes,
                        mode=jobs_pb2.COPY_MODE_FULL,
                    ),
                )
            )
        await self.client.report_progress(self.report(start, total, phase=jobs_pb2.COPY_PHASE_DONE))
        await self.client.emit_event(
            stream_pb2.JobEvent(job_id=job_id, completed=stream_pb2.JobCompleted(bytes_copied=total))
        )

    @staticmethod
    def report(
        start: stream_pb2.StartReplicationCommand, done: int, phase: int = jobs_pb2.COPY_PHASE_COPYING
    ) -> stream_pb2.ProgressReport:
        total = sum(d.capacity_bytes for d in start.disks)
        return stream_pb2.ProgressReport(
            job_id=start.job_id,
            phase=phase,  # type: ignore[arg-type]
            current_operation=f"copying {done}/{total}",
            bytes_done=done,
            bytes_total=total,
            throughput_bytes_per_second=1 << 20,
            disks=[
                stream_pb2.DiskProgress(
                    disk_id=d.disk_id,
                    bytes_done=done * d.capacity_bytes // max(total, 1),
                    bytes_total=d.capacity_bytes,
                    phase=phase,  # type: ignore[arg-type]
                    mode=jobs_pb2.COPY_MODE_FULL,
                )
                for d in start.disks
            ],
        )


async def accept(command: stream_pb2.Command) -> stream_pb2.CommandResult:
    """A start command taken on (a refused one would have the janitor fail the job under the test's feet)."""
    return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED)


def stream_client(oma: Oma, enrollment: Enrollment, **kwargs: Any) -> StreamClient:
    kwargs.setdefault("initial_backoff_s", 0.02)
    kwargs.setdefault("max_backoff_s", 0.1)
    kwargs.setdefault("fsync", False)
    kwargs.setdefault("channel_credentials", oma.credentials())
    return StreamClient(oma.target, enrollment.appliance_id, enrollment.credential, agent_version="mini-1", **kwargs)


async def wait_status(operator: OperatorClient, job_id: str, status: int, timeout: float = 10.0) -> Any:
    async def _watch() -> Any:
        async for update in operator.watch_job(job_id):
            if update.replication_job.status == status:
                return update.replication_job
        raise AssertionError("watch ended")

    return await asyncio.wait_for(_watch(), timeout)


async def test_a_whole_job_over_the_real_stream(oma: Oma, operator: OperatorClient) -> None:
    enrollment = await operator.enroll_appliance("vma-whole-job")
    job = await seed_job(oma.app, enrollment.appliance_id)
    acked_progress: list[int] = []

    def on_ack(job_id: str, sequence: int, report: stream_pb2.ProgressReport | None) -> None:
        if report is not None:
            acked_progress.append(report.bytes_done)

    client = stream_client(oma, enrollment, on_ack=on_ack)
    agent = MiniAgent(client)
    await client.start(wait_connected=5)
    try:
        assert [c.job_id for c in client.welcome.open_jobs] == [job.id]  # type: ignore[union-attr]
        final = await wait_status(operator, job.id, COMPLETED)
        await client.wait_acked(5)
        total = sum(d.bytes_total for d in job.disks)
        assert final.bytes_done == total and final.percent == 100.0
        # started, 2 reports, 2 disk events, the last report, completed: 7 sequences, all applied, all acked.
        assert final.last_sequence == 7 == client.acked_sequence(job.id)
        assert client.unacked_count() == 0 and len(agent.runs) == 1
        assert acked_progress and acked_progress[-1] == total
        records = await oma.app.db.run(lambda: list(ChangeIdRecord.select().where(ChangeIdRecord.job_id == job.id)))
        assert sorted(r.change_id for r in records) == sorted(f"cid-{d.disk_id}" for d in job.disks)
        appliance = await operator.get_appliance(enrollment.appliance_id)
        assert appliance.session_id == client.session_id and appliance.agent_version == "mini-1"
    finally:
        await client.stop()


async def test_job_finishes_across_an_oma_restart_and_an_agent_restart(
    oma: Oma, operator: OperatorClient, tmp_path: Path
) -> None:
    enrollment = await operator.enroll_appliance("vma-restarts")
    job = await seed_job(oma.app, enrollment.appliance_id)
    state_dir = tmp_path / "vma"
    client = stream_client(oma, enrollment, state_dir=state_dir)
    agent = MiniAgent(client)
    agent.resume.clear()
    await client.start(wait_connected=5)
    await asyncio.wait_for(agent.paused.wait(), 5)
    await client.wait_acked(5)
    assert client.acked_sequence(job.id) == 2

    # The OMA goes away; the copy goes on and its reports and events wait in the outbox.
    await oma.stop()
    agent.resume.set()
    await asyncio.wait_for(asyncio.gather(*agent.tasks), 5)
    # Sequences 3-7 were made offline: report 3 was replaced by report 6; the events 4, 5 and 7 all wait.
    assert client.unacked_count() == 4
    # And the agent restarts too, before the OMA is back: the state dir carries everything over.
    await client.stop()
    restarted = stream_client(oma, enrollment, state_dir=state_dir)
    second_agent = MiniAgent(restarted)
    assert restarted.unacked_count() == 4 and restarted.last_command_id == agent.runs[0]
    assert restarted.last_sequence(job.id) == 7
    await restarted.start()
    try:
        await oma.start()
        await restarted.wait_connected(10)
        final = await wait_status(operator, job.id, COMPLETED)
        await restarted.wait_acked(5)
        assert final.last_sequence == 7 and final.percent == 100.0
        assert second_agent.runs == []  # the start command was answered before; it is not run again
    finally:
        await restarted.stop()


async def test_lost_agent_state_continues_above_the_omas_cursor(oma: Oma, operator: OperatorClient) -> None:
    enrollment = await operator.enroll_appliance("vma-lost-state")
    job = await seed_job(oma.app, enrollment.appliance_id)
    first = stream_client(oma, enrollment)
    first.on_command("start_replication", accept)
    await first.start(wait_connected=5)
    await first.emit_event(stream_pb2.JobEvent(job_id=job.id, started=stream_pb2.JobStarted()))
    await first.report_progress(stream_pb2.ProgressReport(job_id=job.id, bytes_done=10, bytes_total=1 << 21))
    await first.wait_acked(5)
    await first.stop()
    second = stream_client(oma, enrollment)  # no state dir: it remembers nothing
    second.on_command("start_replication", accept)
    await second.start(wait_connected=5)
    try:
        assert await second.report_progress(stream_pb2.ProgressReport(job_id=job.id, bytes_done=20)) == 3
        await second.wait_acked(5)
        assert (await operator.get_job(job.id)).bytes_done == 20
    finally:
        await second.stop()


async def test_bad_and_revoked_credentials_end_the_client(oma: Oma, operator: OperatorClient) -> None:
    enrollment = await operator.enroll_appliance("vma-auth")
    wrong = stream_client(oma, Enrollment(enrollment.appliance_id, "not-the-secret", enrollment.appliance))
    with pytest.raises(AuthenticationError, match="credential is wrong"):
        await wrong.start(wait_connected=5)
    await wrong.stop()
    assert wrong.connect_attempts == 1
    await operator.revoke_appliance(enrollment.appliance_id)
    revoked = stream_client(oma, enrollment)
    with pytest.raises(AuthenticationError, match="revoked"):
        await revoked.start(wait_connected=5)
    await revoked.stop()


async def test_a_report_about_another_appliances_job_is_rejected_and_dropped(
    oma: Oma, operator: OperatorClient
) -> None:
    mine = await operator.enroll_appliance("vma-mine")
    theirs = await operator.enroll_appliance("vma-theirs")
    their_job = await seed_job(oma.app, theirs.appliance_id)
    errors: list[stream_pb2.StreamError] = []
    client = stream_client(oma, mine, on_stream_error=errors.append)
    await client.start(wait_connected=5)
    try:
        await client.emit_event(stream_pb2.JobEvent(job_id=their_job.id, started=stream_pb2.JobStarted()))
        await client.report_progress(stream_pb2.ProgressReport(job_id="no-such-job", bytes_done=1))
        await client.wait_acked(5)
        assert sorted(e.code for e in errors) == [
            stream_pb2.STREAM_ERROR_CODE_UNKNOWN_JOB,
            stream_pb2.STREAM_ERROR_CODE_FOREIGN_JOB,
        ]
        assert client.unacked_count() == 0
        job = await operator.get_job(their_job.id)
        assert job.status == replication_pb2.REPLICATION_JOB_STATUS_WAITING_FOR_VMA and job.last_sequence == 0
    finally:
        await client.stop()


async def test_long_texts_are_shortened_by_the_client_not_refused_by_the_oma(
    oma: Oma, operator: OperatorClient
) -> None:
    enrollment = await operator.enroll_appliance("vma-long-texts")
    job = await seed_job(oma.app, enrollment.appliance_id)
    client = stream_client(oma, enrollment)
    client.on_command("start_replication", accept)
    await client.start(wait_connected=5)
    try:
        report = MiniAgent.report(
            stream_pb2.StartReplicationCommand(
                job_id=job.id,
                disks=[stream_pb2.DiskTarget(disk_id=d.disk_id, capacity_bytes=d.bytes_total) for d in job.disks],
            ),
            1000,
        )
        report.current_operation = "x" * 5000
        await client.report_progress(report)
        await client.emit_event(
            stream_pb2.JobEvent(
                job_id=job.id,
                failed=stream_pb2.JobFailed(error_class=jobs_pb2.ERROR_CLASS_INTERNAL, detail="why " * 3000),
            )
        )
        failed = await wait_status(operator, job.id, replication_pb2.REPLICATION_JOB_STATUS_FAILED)
        await client.wait_acked(5)
        assert len(failed.error.message) == 4096 and failed.error.message.endswith("…")
        assert failed.last_sequence == 2  # both messages applied, neither refused
    finally:
        await client.stop()
