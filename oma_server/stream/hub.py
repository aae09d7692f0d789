"""Appliance sessions: one live stream per appliance, liveness, and routing of messages both ways.

Each session has one bounded outgoing queue drained by the stream's single writer (the servicer); a peer too slow
to drain it is disconnected (it reconnects and is resent what it needs) rather than slowing anyone else. Inbound
messages are applied through the job store and the outbox; a bad message gets a StreamError reply and the stream
stays up.

Liveness: a session silent for `3 x heartbeat interval` is closed and its appliance marked disconnected; if the
appliance has not returned by the same deadline its copying jobs become `stalled` (never failed), and they resume
when it says hello again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from loguru import logger

from oma_server import metrics
from oma_server.appliances import ApplianceService
from oma_server.clock import Clock
from oma_server.cluster.ownership import ProcessLocks
from oma_server.db.database import Database
from oma_server.db.models import Appliance, new_id
from oma_server.errors import MessageRejected, Unavailable
from oma_server.outbox import CommandOutbox
from oma_server.protocol.commands import CommandResult, QueuedCommand
from oma_server.protocol.stream import (
    CommandResultAck,
    Heartbeat,
    Hello,
    JobAck,
    JobEvent,
    Outgoing,
    ProgressReport,
    StreamError,
    Welcome,
)
from oma_server.replication import liveness
from oma_server.replication.applier import VmaMessageApplier
from oma_server.replication.store import ReplicationJobStore
from oma_server.security.appliance_identity import ApplianceCertificates
from oma_server.stream.last_seen import LastSeen
from oma_server.uninterruptible import finish, uninterruptible
from oma_server.version import __version__

MISSED_HEARTBEATS = 3
REVOKED = "the appliance was revoked (its certificates and credential); enroll it again to reconnect"
LAST_SEEN_WRITE_INTERVAL_S = 30.0
#: how long a hello waits for the OMA process holding the appliance's stream to let it go
TAKEOVER_WAIT_S = 10.0
TAKEN_OVER = "taken over by a newer connection of the same appliance to another OMA process"


@dataclass(eq=False)
class Session:
    appliance_id: str
    session_id: str
    peer: str
    queue: asyncio.Queue[Outgoing | None]
    last_seen: float
    close_reason: str = ""
    last_seen_written: float = 0.0
    stats: dict[str, int] = field(default_factory=lambda: {"progress": 0, "events": 0, "rejected": 0})

    @property
    def closed(self) -> bool:
        return bool(self.close_reason)

    def send(self, message: Outgoing) -> bool:
        if self.closed:
            return False
        try:
            self.queue.put_nowait(message)
            if isinstance(message, JobAck):
                metrics.ACKS.acked(message.job_id)
            return True
        except asyncio.QueueFull:
            self.close("the appliance does not read its stream fast enough (outgoing queue full)")
            return False

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.close_reason = reason
        # Wake the writer even when the queue is full: drop one pending item to make room for the end marker.
        with contextlib.suppress(asyncio.QueueFull):
            if self.queue.full():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class SessionHub:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        appliances: ApplianceService,
        certificates: ApplianceCertificates,
        jobs: ReplicationJobStore,
        applier: VmaMessageApplier,
        outbox: CommandOutbox,
        *,
        process_id: str,
        heartbeat_interval_s: float = 10.0,
        queue_size: int = 1024,
        ownership: ProcessLocks | None = None,
        ask_release: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.appliances = appliances
        self.certificates = certificates
        self.jobs = jobs
        self.applier = applier
        self.outbox = outbox
        self.process_id = process_id
        self.heartbeat_interval_s = heartbeat_interval_s
        self.queue_size = queue_size
        #: several OMA processes on one PostgreSQL: which holds each appliance's stream (None: this one, always)
        self.ownership = ownership if ownership is not None and ownership.enabled else None
        self._ask_release = ask_release
        self.sessions: dict[str, Session] = {}
        #: called with the appliance id once a new session is welcomed (the bandwidth governor looks again)
        self.on_session: list[Callable[[str], None]] = []
        self._disconnected_since: dict[str, float] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.last_seen = LastSeen(db, self.clock)

    @property
    def deadline_s(self) -> float:
        return MISSED_HEARTBEATS * self.heartbeat_interval_s

    async def start(self) -> None:
        def reset_connections() -> None:
            # Streams held by this process before a restart are gone; the appliances will dial again.
            Appliance.update(connection_state="disconnected", connected_to="", session_id="").where(
                (Appliance.connection_state == "connected") & (Appliance.connected_to == self.process_id)
            ).execute()

        await self.db.tx(reset_connections)
        now = self.clock.monotonic()
        for job in self.jobs.open_jobs():
            self._disconnected_since.setdefault(job.appliance_id, now)
        self._watchdog = asyncio.create_task(self._watch_liveness(), name="stream-liveness")

    async def stop(self) -> None:
        """Tell every stream to end (the servers' grace period lets them drain), stop the watchdog."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self.last_seen.stop()
        for session in list(self.sessions.values()):
            session.close("the OMA is shutting down; reconnect")

    # ---- opening and closing ------------------------------------------------------------------------------------
    async def open(self, hello: Hello, peer: str, certificate_pem: bytes | None = None) -> tuple[Session, Welcome]:
        """Authenticate, replace any older session of the appliance, record it connected, resume its stalled jobs
        and build the Welcome — whole, even if the caller goes away meanwhile; then the new session is closed
        again at once, so nothing stays "connected" for a stream that is gone."""
        opening = asyncio.ensure_future(self._open(hello, peer, certificate_pem))
        try:
            return await finish(opening)
        except asyncio.CancelledError:
            if not opening.cancelled() and opening.exception() is None:
                session, _ = opening.result()
                await finish(self.close(session, "the stream ended during its hello"))
            raise

    async def _open(self, hello: Hello, peer: str, certificate_pem: bytes | None) -> tuple[Session, Welcome]:
        # A verified client certificate (the appliance port) names the appliance; without one only the deprecated
        # credential hello can, where the OMA allows it.
        if certificate_pem:
            appliance, _ = await self.certificates.authenticate(certificate_pem, hello.appliance_id)
        else:
            appliance = await self.appliances.authenticate(hello.appliance_id, hello.credential)
        session = Session(
            appliance_id=appliance.id,
            session_id=str(uuid.uuid4()),
            peer=peer,
            queue=asyncio.Queue(maxsize=self.queue_size),
            last_seen=self.clock.monotonic(),
        )
        log = logger.bind(appliance_id=appliance.id, session_id=session.session_id)
        now = self.clock.now()

        def mark_connected() -> None:
            Appliance.update(
                connection_state="connected",
                connected_to=self.process_id,
                session_id=session.session_id,
                last_seen_at=now,
                agent_version=hello.agent_version,
                capabilities=list(hello.capabilities),
                last_command_id=hello.last_command_id,
            ).where(Appliance.id == appliance.id).execute()

        await self._hold_stream(appliance.id)
        # The database first, then memory: a session this process routes to is one the database names.
        await self.db.tx(mark_connected)
        previous = self.sessions.get(appliance.id)
        if previous is not None:
            previous.close("replaced by a newer connection from the same appliance")
            log.info("new stream replaces session {old}", old=previous.session_id)
        self.sessions[appliance.id] = session
        self._disconnected_since.pop(appliance.id, None)
        session.last_seen_written = self.clock.monotonic()
        try:
            resumed = await liveness.resume_jobs_of(self.jobs, appliance.id)
            # Make everything applied so far durable, so the cursors below are exact.
            await self.jobs.flush()
        except BaseException:
            await finish(self.close(session, "the hello could not be completed"))
            raise
        welcome = Welcome(
            session_id=session.session_id,
            heartbeat_interval_s=self.heartbeat_interval_s,
            server_version=__version__,
            cursors=tuple(self.jobs.durable_cursors(appliance.id)),
        )
        log.info(
            "appliance connected from {peer} (agent {version}); {n} open jobs, {r} resumed",
            peer=peer,
            version=hello.agent_version,
            n=len(welcome.cursors),
            r=len(resumed),
        )
        return session, welcome

    async def _hold_stream(self, appliance_id: str) -> None:
        """With several OMA processes: take the appliance's stream lock, asking the process that holds it to let go
        (it closes its stream, writes what it applied, unlocks), then take its open jobs as stored."""
        if self.ownership is None:
            return
        if not await self.ownership.take(stream_lock(appliance_id)):
            holder = await self.db.run(
                lambda: Appliance.select(Appliance.connected_to).where(Appliance.id == appliance_id).scalar()
            )
            if self._ask_release is not None:
                await self._ask_release(appliance_id)
            deadline = self.clock.monotonic() + TAKEOVER_WAIT_S
            while not await self.ownership.take(stream_lock(appliance_id)):
                if self.clock.monotonic() > deadline:
                    raise Unavailable(
                        f"appliance {appliance_id}'s stream is still held by OMA process {holder or '?'}, which did "
                        f"not let it go within {TAKEOVER_WAIT_S:.0f}s; the appliance retries by itself",
                        reason="STREAM_HELD_ELSEWHERE",
                        appliance_id=appliance_id,
                    )
                await asyncio.sleep(0.05)
            logger.bind(appliance_id=appliance_id).info("stream taken over from OMA process {p}", p=holder or "?")
        await self.jobs.adopt(appliance_id)

    async def release_here(self, appliance_id: str) -> None:
        """Another OMA process has a newer stream of the appliance: end ours (and let its lock go)."""
        session = self.sessions.get(appliance_id)
        if session is not None:
            await self.close(session, TAKEN_OVER)
        elif self.ownership is not None:
            await self.ownership.give_up(stream_lock(appliance_id))

    async def after_welcome(self, session: Session) -> None:
        """Send every command the appliance has not answered yet (again, after a reconnect or an OMA restart)."""
        await self.outbox.kick(session.appliance_id, resend=True)
        for hook in self.on_session:
            hook(session.appliance_id)

    @uninterruptible
    async def close(self, session: Session, reason: str) -> None:
        session.close(reason)  # the stream's own state: nothing more is sent on it
        if self.sessions.get(session.appliance_id) is not session:
            return  # replaced: the newer session owns the appliance's state
        now = self.clock.now()

        def mark_disconnected() -> None:
            Appliance.update(connection_state="disconnected", connected_to="", session_id="", last_seen_at=now).where(
                (Appliance.id == session.appliance_id) & (Appliance.session_id == session.session_id)
            ).execute()

        with contextlib.suppress(Exception):  # the row names the session: a newer one's record is left alone
            await self.db.tx(mark_disconnected)
        if self.sessions.get(session.appliance_id) is session:
            del self.sessions[session.appliance_id]
            self._disconnected_since[session.appliance_id] = session.last_seen
            if self.ownership is not None:
                # What this process applied is written before another process may take the appliance's jobs.
                with contextlib.suppress(Exception):
                    await self.jobs.flush()
                await self.ownership.give_up(stream_lock(session.appliance_id))
        logger.bind(appliance_id=session.appliance_id, session_id=session.session_id).info(
            "appliance disconnected: {reason}", reason=reason
        )

    # ---- inbound ---------------------------------------------------------------------------------------------------
    def touch(self, session: Session) -> None:
        session.last_seen = self.clock.monotonic()

    async def on_progress(self, session: Session, report: ProgressReport) -> None:
        session.stats["progress"] += 1
        metrics.report_received(report.job_id)
        ack = await self._guard(session, self.applier.apply_progress(session.appliance_id, report))
        if ack:
            session.send(JobAck(job_id=report.job_id, sequence=ack))

    async def on_event(self, session: Session, event: JobEvent) -> None:
        session.stats["events"] += 1
        metrics.ACKS.received(event.job_id)
        ack = await self._guard(session, self.applier.apply_event(session.appliance_id, event))
        if ack:
            session.send(JobAck(job_id=event.job_id, sequence=ack))

    async def on_command_result(self, session: Session, result: CommandResult) -> None:
        stored = await self._guard(session, self.outbox.record_result(session.appliance_id, result))
        if stored is not None:
            session.send(CommandResultAck(command_id=result.command_id))

    async def on_heartbeat(self, session: Session, heartbeat: Heartbeat) -> None:
        now = self.clock.monotonic()
        if now - session.last_seen_written >= LAST_SEEN_WRITE_INTERVAL_S:
            session.last_seen_written = now
            self.last_seen.mark(session.appliance_id)

    def reject(self, session: Session, rejected: MessageRejected) -> None:
        """Answer a message that cannot be applied with a StreamError naming it; nothing of it was applied."""
        session.stats["rejected"] += 1
        logger.bind(appliance_id=session.appliance_id, job_id=rejected.job_id or None).info(
            "rejected message: {message}", message=rejected.message
        )
        session.send(
            StreamError(
                code=rejected.code,
                job_id=rejected.job_id,
                sequence=rejected.sequence,
                command_id=rejected.command_id,
                message=rejected.message,
            )
        )

    async def _guard(self, session: Session, work):  # type: ignore[no-untyped-def]
        """Run one message's work; a rejection or an unexpected error becomes a StreamError reply, never a dead
        stream. An unexpected error's text stays in the log, under an error id the reply names."""
        try:
            return await work
        except MessageRejected as rejected:
            self.reject(session, rejected)
        except Exception:
            error_id = new_id()
            session.stats["rejected"] += 1
            logger.opt(exception=True).bind(appliance_id=session.appliance_id, error_id=error_id).error(
                "stream message failed (error id {error_id})", error_id=error_id
            )
            session.send(
                StreamError(
                    code="INVALID_STATE",
                    message=f"the OMA failed to apply this message (error id {error_id}); nothing of it was applied, "
                    "send it again — if this persists, give the error id to the OMA's operator",
                )
            )
        return None

    # ---- outbound ---------------------------------------------------------------------------------------------
    def ack(self, appliance_id: str, job_id: str, sequence: int) -> None:
        """Tell a connected appliance what of a job is durably stored (the job store's flushes call this)."""
        session = self.sessions.get(appliance_id)
        if session is not None and sequence:
            session.send(JobAck(job_id=job_id, sequence=sequence))

    def deliver(self, appliance_id: str, command: QueuedCommand) -> bool:
        """Hand a command to the appliance's live session here; False when it has none (the outbox resends)."""
        session = self.sessions.get(appliance_id)
        return session is not None and session.send(command)

    def revoked(self, appliance_id: str) -> None:
        """An appliance was revoked: its live stream ends now."""
        session = self.sessions.get(appliance_id)
        if session is not None:
            session.close(REVOKED)

    def session_ids(self) -> dict[str, str]:
        """Appliance id → session id of every stream this process holds."""
        return {appliance_id: s.session_id for appliance_id, s in self.sessions.items()}

    def connected(self, appliance_id: str) -> bool:
        """Whether this process holds the appliance's stream."""
        return appliance_id in self.sessions

    async def reachable(self, appliance_id: str) -> bool:
        """Whether the appliance's stream is up, here or (several OMA processes) in another process, which then
        delivers what is queued for it."""
        if appliance_id in self.sessions:
            return True
        return self.ownership is not None and await self.db.run(_connected_anywhere, appliance_id)

    # ---- liveness ---------------------------------------------------------------------------------------------
    async def _watch_liveness(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.heartbeat_interval_s / 2))
            try:
                await self.check_liveness()
            except Exception:
                logger.opt(exception=True).error("liveness check failed")

    async def check_liveness(self) -> None:
        now = self.clock.monotonic()
        for session in list(self.sessions.values()):
            if now - session.last_seen > self.deadline_s:
                await self.close(session, f"no heartbeat for {timedelta(seconds=round(now - session.last_seen))}")
        if self.ownership is not None:
            await self._check_ownership(now)
        for appliance_id, since in list(self._disconnected_since.items()):
            if appliance_id in self.sessions:
                self._disconnected_since.pop(appliance_id, None)
            elif now - since > self.deadline_s:
                self._disconnected_since.pop(appliance_id, None)
                if self.ownership is not None:
                    if await self.db.run(_connected_anywhere, appliance_id):
                        continue  # it came back, to another OMA process
                    await self.jobs.adopt(appliance_id)
                stalled = await liveness.stall_jobs_of(self.jobs, appliance_id)
                if stalled:
                    logger.bind(appliance_id=appliance_id).warning(
                        "appliance silent past its deadline: {n} job(s) stalled until it returns", n=len(stalled)
                    )

    async def _check_ownership(self, now: float) -> None:
        """Several OMA processes: end every stream here if this process lost its locks (its ownership connection
        went); mark disconnected the appliances recorded as connected to a process that no longer holds them (it
        died), so their deadline runs here."""
        if not await self.ownership.check():  # type: ignore[union-attr]
            for session in list(self.sessions.values()):
                await self.close(session, "this OMA process lost its database connection; reconnect")
        rows = await self.db.run(_connected_elsewhere, self.process_id)
        orphaned = await self.ownership.unheld(stream_lock(a) for a, _ in rows)  # type: ignore[union-attr]
        for appliance_id, session_id in rows:
            if stream_lock(appliance_id) in orphaned and await self.db.tx(
                _mark_gone, appliance_id, session_id, self.clock.now()
            ):
                logger.bind(appliance_id=appliance_id).warning(
                    "the OMA process holding this appliance's stream is gone; marked disconnected"
                )
                self._disconnected_since.setdefault(appliance_id, now)


def stream_lock(appliance_id: str) -> str:
    """The name of the lock that makes a process the holder of the appliance's stream (cluster/ownership.py)."""
    return f"stream:{appliance_id}"


def _connected_anywhere(appliance_id: str) -> bool:
    row = Appliance.get_or_none(Appliance.id == appliance_id)
    return row is not None and row.connection_state == "connected"


def _connected_elsewhere(process_id: str) -> list[tuple[str, str]]:
    query = Appliance.select(Appliance.id, Appliance.session_id).where(
        (Appliance.connection_state == "connected") & (Appliance.connected_to != process_id)
    )
    return [(r.id, r.session_id) for r in query]


def _mark_gone(appliance_id: str, session_id: str, now: object) -> bool:
    """Disconnected, if the row still names that stream (a newer one's record is left alone)."""
    return bool(
        Appliance.update(connection_state="disconnected", connected_to="", session_id="", last_seen_at=now)
        .where((Appliance.id == appliance_id) & (Appliance.session_id == session_id))
        .execute()
    )
