"""The client's side of the stream protocol against a scripted fake OMA gateway (tests/stream_client/fake_gateway)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from oma.common.v1 import jobs_pb2
from oma.v1 import gateway_pb2
from oma_server.ports import free_port
from tests.stream_client.conftest import APPLIANCE_ID, CREDENTIAL, ClientFactory
from tests.stream_client.fake_gateway import FakeGateway, FakeOma
from vma.v1 import stream_pb2
from vma_client_stubs.stream_client import AuthenticationError, ClientStoppedError, StreamClient


def progress(job: str, done: int) -> stream_pb2.ProgressReport:
    return stream_pb2.ProgressReport(
        job_id=job, bytes_done=done, bytes_total=1000, phase=jobs_pb2.COPY_PHASE_COPYING, current_operation="copy"
    )


def started(job: str) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job, started=stream_pb2.JobStarted(source_snapshot="snap-1"))


def disk_done(job: str, disk: str) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job, disk_completed=stream_pb2.DiskCompleted(disk_id=disk, change_id="52 1/9"))


def completed(job: str) -> stream_pb2.JobEvent:
    return stream_pb2.JobEvent(job_id=job, completed=stream_pb2.JobCompleted(bytes_copied=1000))


def command(command_id: str, **kind: object) -> gateway_pb2.ConnectResponse:
    return gateway_pb2.ConnectResponse(command=stream_pb2.Command(command_id=command_id, **kind))  # type: ignore[arg-type]


# -- session ----------------------------------------------------------------------------------------------------


async def test_hello_first_then_welcome(make_client: ClientFactory, gateway: FakeGateway) -> None:
    gateway.open_jobs = {"job-1"}
    gateway.applied["job-1"] = 4
    client = make_client(capabilities=["resume-from-extent"])
    await client.start(wait_connected=5)
    assert client.connected
    hello = gateway.hellos[0]
    assert (hello.appliance_id, hello.credential, hello.agent_version) == (APPLIANCE_ID, CREDENTIAL, "test-1.0")
    assert list(hello.capabilities) == ["resume-from-extent"] and hello.last_command_id == ""
    assert client.session_id == gateway.session.session_id
    assert client.welcome is not None and client.welcome.open_jobs[0].job_id == "job-1"
    # Sequences continue above the Welcome's cursor for a job this client never saw (its state was lost).
    assert await client.report_progress(progress("job-1", 10)) == 5
    assert client.next_sequence("job-1") == 6


async def test_bad_credential_stops_the_client_without_retrying(
    make_client: ClientFactory, gateway: FakeGateway
) -> None:
    client = make_client(credential="wrong")
    with pytest.raises(AuthenticationError, match="unknown or revoked credential"):
        await client.start(wait_connected=5)
    with pytest.raises(AuthenticationError):
        await client.wait_connected(1)
    with pytest.raises(AuthenticationError):
        await client.wait_closed()
    with pytest.raises(AuthenticationError):
        await client.report_progress(progress("job-1", 1))
    await asyncio.sleep(0.2)  # many backoff periods of this client: a retry would show
    assert client.connect_attempts == 1 and len(gateway.hellos) == 1


async def test_calls_buffer_while_the_oma_is_unreachable_then_flow(gateway: FakeGateway, tmp_path: Path) -> None:
    oma = FakeOma(gateway)
    oma.port = free_port()
    client = StreamClient(
        oma.target, APPLIANCE_ID, CREDENTIAL, agent_version="t", initial_backoff_s=0.01, max_backoff_s=0.05
    )
    await client.start()
    try:
        with pytest.raises(TimeoutError):
            await client.wait_connected(0.1)
        await asyncio.wait_for(client.emit_event(started("job-1")), 0.5)
        for done in range(1, 101):
            await asyncio.wait_for(client.report_progress(progress("job-1", done)), 0.5)
        await asyncio.wait_for(client.emit_event(disk_done("job-1", "disk-1")), 0.5)
        assert client.unacked_count() == 3  # the event, the latest report, the disk event
        assert client.connect_attempts > 1
        await oma.start()
        await client.wait_connected(5)
        await client.wait_acked(5)
        # Superseded reports were never written; the events and the latest report were, in sequence order.
        assert gateway.session.job_messages("job-1") == [("event", 1), ("progress", 101), ("event", 102)]
        assert gateway.applied_progress["job-1"].bytes_done == 100
        assert client.acked_sequence("job-1") == 102 and client.unacked_count() == 0
    finally:
        await client.stop()
        await oma.stop(0)


async def test_wait_connected_on_a_stopped_client(make_client: ClientFactory) -> None:
    client = make_client()
    with pytest.raises(ClientStoppedError):
        await client.wait_connected(0.1)
    await client.start(wait_connected=5)
    await client.stop()
    assert not client.connected
    with pytest.raises(ClientStoppedError):
        await client.wait_connected(0.1)


# -- acks and resend --------------------------------------------------------------------------------------------


async def test_acks_release_messages_and_report_acked_progress(
    make_client: ClientFactory, gateway: FakeGateway
) -> None:
    acks: list[tuple[str, int, int | None]] = []

    def on_ack(job: str, seq: int, report: stream_pb2.ProgressReport | None) -> None:
        acks.append((job, seq, report.bytes_done if report else None))

    client = make_client(on_ack=on_ack)
    await client.start(wait_connected=5)
    assert await client.emit_event(started("job-1")) == 1
    assert await client.report_progress(progress("job-1", 250)) == 2
    await client.wait_acked(5)
    assert acks == [("job-1", 1, None), ("job-1", 2, 250)]
    assert client.acked_sequence("job-1") == 2 and client.unacked_count() == 0
    sent = gateway.session.of_kind("progress")[0]
    assert sent.job_id == "job-1" and sent.HasField("sent_at") and sent.bytes_done == 250


async def test_resend_after_reconnect_is_exactly_what_the_welcome_shows_missing(
    make_client: ClientFactory, gateway: FakeGateway
) -> None:
    gateway.auto_ack = False
    gateway.open_jobs = {"job-1", "job-2"}
    client = make_client()
    await client.start(wait_connected=5)
    await client.emit_event(started("job-1"))  # 1
    await client.report_progress(progress("job-1", 100))  # 2
    await client.emit_event(disk_done("job-1", "disk-1"))  # 3
    await client.report_progress(progress("job-1", 600))  # 4
    await client.emit_event(started("job-2"))  # job-2: 1
    await gateway.wait_for(lambda: len(gateway.session.job_messages()) == 4)
    # Report 2 was superseded by report 4 before the writer ran: it never reached the wire.
    assert gateway.session.job_messages("job-1") == [("event", 1), ("event", 3), ("progress", 4)]
    assert client.unacked_count() == 4  # nothing acked
    first = gateway.session
    # The OMA durably stored job-1 up to 2 only (say it crashed before storing more), nothing of job-2.
    gateway.applied = {"job-1": 2}
    first.kill()
    await gateway.wait_for(lambda: len(gateway.sessions) == 2 and len(gateway.session.job_messages()) == 3)
    second = gateway.session
    assert second.job_messages("job-1") == [("event", 3), ("progress", 4)]
    assert second.job_messages("job-2") == [("event", 1)]
    assert client.unacked_count() == 3 and client.acked_sequence("job-1") == 2
    # New messages continue the sequence on the new stream.
    assert await client.emit_event(completed("job-1")) == 5
    await gateway.wait_for(lambda: ("event", 5) in second.job_messages("job-1"))


async def test_reconnects_after_server_restart_and_resends(
    make_client: ClientFactory, gateway: FakeGateway, fake_oma: FakeOma
) -> None:
    client = make_client()
    await client.start(wait_connected=5)
    await client.emit_event(started("job-1"))
    await client.wait_acked(5)
    await fake_oma.stop(0)
    await asyncio.wait_for(gateway.session.ended.wait(), 5)
    await client.report_progress(progress("job-1", 500))  # buffered while the OMA is down
    await client.emit_event(completed("job-1"))
    await fake_oma.start()
    await client.wait_connected(5)
    await client.wait_acked(5)
    assert gateway.session.job_messages("job-1") == [("progress", 2), ("event", 3)]
    assert [e.WhichOneof("event") for e in gateway.applied_events] == ["started", "completed"]
    assert client.sessions == 2


async def test_stream_error_drops_the_rejected_message_and_is_not_resent(
    make_client: ClientFactory, gateway: FakeGateway
) -> None:
    def reject(request: gateway_pb2.ConnectRequest) -> stream_pb2.StreamError | None:
        if request.WhichOneof("message") == "event" and request.event.job_id == "foreign":
            return stream_pb2.StreamError(
                code=stream_pb2.STREAM_ERROR_CODE_FOREIGN_JOB,
                job_id="foreign",
                sequence=request.event.sequence,
                message="job foreign belongs to another appliance",
            )
        return None

    gateway.reject = reject
    errors: list[stream_pb2.StreamError] = []
    client = make_client(on_stream_error=errors.append)
    await client.start(wait_connected=5)
    await client.emit_event(started("foreign"))
    await client.emit_event(started("job-1"))
    await client.wait_acked(5)
    assert [e.code for e in errors] == [stream_pb2.STREAM_ERROR_CODE_FOREIGN_JOB]
    assert client.unacked_count() == 0
    gateway.session.kill()
    await gateway.wait_for(lambda: len(gateway.sessions) == 2)
    await client.wait_connected(5)
    await client.emit_event(completed("job-1"))
    await client.wait_acked(5)
    assert gateway.session.job_messages() == [("event", 2)]  # nothing of the rejected job came back


async def test_a_stream_closed_by_the_oma_reconnects(make_client: ClientFactory, gateway: FakeGateway) -> None:
    client = make_client()
    await client.start(wait_connected=5)
    gateway.session.out.put_nowait(None)  # the OMA ends the stream with OK (for example at shutdown)
    await gateway.wait_for(lambda: len(gateway.sessions) == 2)
    await client.wait_connected(5)
    assert client.session_id == "s2"


# -- heartbeats -------------------------------------------------------------------------------------------------


async def test_heartbeats_at_the_welcome_interval_with_running_jobs(
    make_client: ClientFactory, gateway: FakeGateway
) -> None:
    gateway.heartbeat_interval_s = 0.05
    client = make_client(running_jobs=lambda: ["job-1", "job-2"])
    await client.start(wait_connected=5)
    await gateway.wait_for(lambda: len(gateway.session.of_kind("heartbeat")) >= 4)
    beats = gateway.session.of_kind("heartbeat")
    assert all(list(b.running_job_ids) == ["job-1", "job-2"] and b.HasField("sent_at") for b in beats)


# -- commands ---------------------------------------------------------------------------------------------------


async def test_commands_are_dispatched_by_kind_and_deduplicated(
    make_client: ClientFactory, gateway: FakeGateway
) -> None:
    runs: list[str] = []

    async def discover(cmd: stream_pb2.Command) -> stream_pb2.CommandResult:
        runs.append(cmd.command_id)
        return stream_pb2.CommandResult(
            outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED, discovery=stream_pb2.DiscoveryResult()
        )

    async def power_off(cmd: stream_pb2.Command) -> None:
        raise RuntimeError("vCenter said no")

    client = make_client()
    client.on_command("discover", discover)
    client.on_command("power_off", power_off)
    with pytest.raises(ValueError, match="unknown command kind"):
        client.on_command("reboot", discover)
    await client.start(wait_connected=5)
    session = gateway.session
    session.send(command("c1", discover=stream_pb2.DiscoverCommand()))
    session.send(command("c1", discover=stream_pb2.DiscoverCommand()))  # duplicate while in flight
    session.send(command("c2", power_off=stream_pb2.PowerOffCommand(vm_uuid="vm")))
    session.send(command("c3", power_on=stream_pb2.PowerOnCommand(vm_uuid="vm")))  # no handler
    await gateway.wait_for(lambda: len(gateway.results) == 3)
    assert runs == ["c1"]
    assert gateway.results["c1"].outcome == stream_pb2.COMMAND_OUTCOME_SUCCEEDED
    assert gateway.results["c1"].HasField("discovery")
    assert gateway.results["c2"].outcome == stream_pb2.COMMAND_OUTCOME_FAILED
    assert gateway.results["c2"].error_class == jobs_pb2.ERROR_CLASS_INTERNAL
    assert "vCenter said no" in gateway.results["c2"].detail
    assert gateway.results["c3"].outcome == stream_pb2.COMMAND_OUTCOME_REJECTED
    await client.wait_acked(5)
    # Re-delivery after the result was acked (the OMA lost it): answered from the cache, the handler not run.
    before = len(session.of_kind("command_result"))
    session.send(command("c1", discover=stream_pb2.DiscoverCommand()))
    await gateway.wait_for(lambda: len(session.of_kind("command_result")) == before + 1)
    assert runs == ["c1"] and session.of_kind("command_result")[-1].command_id == "c1"
    assert client.last_command_id == "c3"


async def test_unacked_command_result_is_resent_after_reconnect(
    make_client: ClientFactory, gateway: FakeGateway
) -> None:
    gateway.ack_results = False
    client = make_client()
    client.on_command("cancel_job", _succeed)
    await client.start(wait_connected=5)
    gateway.session.send(command("c9", cancel_job=stream_pb2.CancelJobCommand(job_id="job-1")))
    await gateway.wait_for(lambda: "c9" in gateway.results)
    gateway.ack_results = True
    gateway.session.kill()
    await gateway.wait_for(lambda: len(gateway.sessions) == 2 and bool(gateway.session.of_kind("command_result")))
    assert gateway.hellos[-1].last_command_id == "c9"
    await client.wait_acked(5)


async def test_start_replication_raises_the_sequence_floor(make_client: ClientFactory, gateway: FakeGateway) -> None:
    seen: list[int] = []
    client = make_client()

    async def start(cmd: stream_pb2.Command) -> None:
        seen.append(client.next_sequence(cmd.start_replication.job_id))

    client.on_command("start_replication", start)
    await client.start(wait_connected=5)
    start_cmd = stream_pb2.StartReplicationCommand(job_id="job-7", vm_uuid="vm", last_applied_sequence=41)
    gateway.session.send(command("c1", start_replication=start_cmd))
    await gateway.wait_for(lambda: "c1" in gateway.results)
    assert seen == [42]
    assert await client.report_progress(progress("job-7", 1)) == 43


async def _succeed(cmd: stream_pb2.Command) -> stream_pb2.CommandResult:
    return stream_pb2.CommandResult(outcome=stream_pb2.COMMAND_OUTCOME_SUCCEEDED)


# -- restarts of the agent --------------------------------------------------------------------------------------


async def test_state_dir_carries_sequences_unacked_messages_and_commands_across_restarts(
    make_client: ClientFactory, gateway: FakeGateway, state_dir: Path
) -> None:
    gateway.auto_ack = False
    runs: list[str] = []

    async def discover(cmd: stream_pb2.Command) -> None:
        runs.append(cmd.command_id)

    first = make_client(state_dir=state_dir)
    first.on_command("discover", discover)
    await first.start(wait_connected=5)
    gateway.session.send(command("c1", discover=stream_pb2.DiscoverCommand()))
    await gateway.wait_for(lambda: "c1" in gateway.results)
    await first.emit_event(started("job-1"))
    await first.report_progress(progress("job-1", 300))
    await gateway.wait_for(lambda: len(gateway.session.job_messages()) == 2)
    await first.stop()  # an agent restart; nothing was acked

    second = make_client(state_dir=state_dir)
    second.on_command("discover", discover)
    assert second.unacked_count() == 2 and second.last_command_id == "c1"
    await second.start(wait_connected=5)
    assert gateway.hellos[-1].last_command_id == "c1"
    await gateway.wait_for(lambda: len(gateway.session.job_messages()) == 2)
    assert gateway.session.job_messages() == [("event", 1), ("progress", 2)]
    assert await second.emit_event(completed("job-1")) == 3
    gateway.session.send(command("c1", discover=stream_pb2.DiscoverCommand()))  # re-delivered after the restart
    await gateway.wait_for(lambda: len(gateway.session.of_kind("command_result")) == 1)
    assert runs == ["c1"] and gateway.session.of_kind("command_result")[0].command_id == "c1"


async def test_messages_are_on_disk_before_they_are_on_the_wire(
    make_client: ClientFactory, gateway: FakeGateway, state_dir: Path
) -> None:
    gateway.auto_ack = False
    client = make_client(state_dir=state_dir)
    await client.start(wait_connected=5)
    await client.emit_event(started("job-1"))
    # report/emit return only after the state file holds the message: a crash now loses nothing.
    from vma_client_stubs.outbox import Outbox, StateFile

    crashed = Outbox()
    assert StateFile(state_dir).load(crashed)
    assert [m.sequence for m in crashed.jobs["job-1"].unacked()] == [1]
    assert crashed.next_sequence("job-1") == 2


# -- backoff ----------------------------------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    client = StreamClient("x:1", "a", "c", agent_version="t", rng=random.Random(1))
    for attempt, ceiling in [(0, 0.2), (1, 0.4), (2, 0.8), (5, 6.4), (7, 25.6), (8, 30.0), (100, 30.0)]:
        delays = [client.backoff_delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the whole range


class RecordingClient(StreamClient):
    """Records the attempt number of every backoff it computes."""

    attempts: list[int]

    def backoff_delay(self, attempt: int) -> float:
        self.attempts.append(attempt)
        return super().backoff_delay(attempt)


async def test_retries_forever_and_resets_backoff_after_each_welcome(gateway: FakeGateway) -> None:
    oma = FakeOma(gateway)
    oma.port = free_port()
    client = RecordingClient(oma.target, APPLIANCE_ID, CREDENTIAL, agent_version="t", initial_backoff_s=0.001)
    client.attempts = []
    client.max_backoff_s = 0.02
    await client.start()
    try:
        # The OMA is not there yet: the attempt count (the exponent of the backoff) grows.
        await asyncio.wait_for(_until(lambda: len(client.attempts) >= 4), 5)
        assert client.attempts[:4] == [0, 1, 2, 3]
        await oma.start()
        await client.wait_connected(5)
        # After each Welcome a cut stream starts the backoff over, for UNAVAILABLE and for any other status.
        before = len(client.attempts)
        for n, code in enumerate([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED]):
            gateway.session.kill(code)
            await gateway.wait_for(lambda n=n: len(gateway.sessions) == n + 2)  # type: ignore[misc]
        await client.wait_connected(5)
        assert client.attempts[before:] == [0, 0, 0] and client.sessions == 4
    finally:
        await client.stop()
        await oma.stop(0)


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - polling a plain attribute of the client under test
        await asyncio.sleep(0.005)


async def test_several_oma_addresses_are_tried_in_turn_and_the_backoff_counts_rounds(gateway: FakeGateway) -> None:
    """Several processes of one OMA: a failed connection moves to the next address at once; the backoff grows
    only once every address has failed in a row, and the stream resumes on whichever process answers."""
    down, up = FakeOma(gateway), FakeOma(gateway)
    down.port = free_port()  # nothing listens there
    await up.start()
    client = RecordingClient(
        f"{down.target},{up.target}", APPLIANCE_ID, CREDENTIAL, agent_version="t", initial_backoff_s=0.001
    )
    client.attempts = []
    try:
        await client.start(wait_connected=5)
        assert client.target == up.target and client.attempts == []  # the dead one cost no backoff
        gateway.session.kill(grpc.StatusCode.UNAVAILABLE)
        await gateway.wait_for(lambda: len(gateway.sessions) == 2)
        await client.wait_connected(5)
        # cut → the next address (down) at once → a whole round failed: one backoff → back on `up`
        assert client.target == up.target and client.attempts == [0] and client.sessions == 2
    finally:
        await client.stop()
        await up.stop(0)
