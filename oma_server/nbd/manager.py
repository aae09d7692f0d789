"""NBD export manager: one supervised nbdkit (file plugin, `dir=` mode) on one port, one symlink per export.

Why nbdkit and not nbd-server (measured on this machine, `python -m bench.nbd`; figures in the README's NBD
section): nbdkit's file plugin in `dir=` mode serves every regular file or block device in one directory — symlinks
followed — under its file name, so **adding or removing an export is creating or deleting a symlink**: no restart,
no handover, nothing for live transfers to survive. nbd-server 3.24 could only change its export set by a restart
(its SIGHUP reload aborts in `free()` and never removes exports), paid 80-450 ms of GnuTLS DH-parameter generation
before serving after each one, and offers x509 TLS only; nbdkit 1.32 has x509 with peer verification and PSK, both
usable per instance, so the next step (issue 14: TLS, each appliance limited to its own jobs' exports) can run one
instance per appliance with its own directory and credentials. Copy throughput into the two is the same within the
noise of this machine, both with nbdcopy and with the reference agent's copier.

What nbdkit 1.32 does, as used here:

* The process (`process.py`): a daemon re-parented to and reaped by the OMA, watched by a pidfd. **A killed OMA**
  leaves it running with its connections; the next start takes it over when it was started with exactly the
  arguments this manager would use (live transfers continue across the OMA restart) and replaces anything else of
  this config directory. Another program on the port is reported as NBD_PORT_IN_USE with its pid.
* One process serves every connection (a thread each); the file plugin opens the export's file per connection and
  keeps it open, so `/proc/<pid>/fd` tells which exports have clients. Removing a symlink stops new connections to
  that name at once; a connected client keeps writing to its device. Removal with clients is refused unless forced;
  a forced removal (or a reconcile replacing a device that has clients) **restarts** the server, which cuts every
  connection — nbdkit has no way to drop one — and logs how many. The reference agent reconnects a cut copy and
  resumes it from its last acknowledged point.
* Supervision: the pidfd wakes the supervisor when nbdkit dies (crash, OOM, SIGKILL): it is restarted with
  back-off. Every `probe_interval_s` a real handshake (NBD_OPT_LIST) must answer, else nbdkit is restarted after
  repeated failures. Each export's device is re-checked; a vanished device puts the export in state "error"
  (nbdkit stops listing a dangling link by itself).
* A hidden export list (`hide_export_list`, the OMA's default whenever NBD TLS is required): nbdkit's exportname
  filter answers NBD_OPT_LIST with an error to every client, so an appliance reaches only the exports whose names
  the OMA gave it — `oma-vol-<CloudStack volume UUID>`, 122 random bits it cannot guess — and an unknown name gets
  "no export named", never a hint of the others. The probe then proves the handshake (TLS included) and takes a
  refused listing as the answer; what is served is the directory, whose devices are checked every round.
* `stop()` ends nbdkit (SIGTERM, then SIGKILL): a stopped OMA leaves no process behind.

Layout under `config_dir`: `exports/<name>` (symlink -> device path; the directory nbdkit serves, `links.py`),
`nbdkit.pid`, `nbdkit.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from oma_server.addresses import parse_host_port
from oma_server.errors import DomainError
from oma_server.nbd.errors import (
    ExportInUse,
    ExportNotFound,
    NbdServerUnavailable,
)
from oma_server.nbd.links import ExportLinks
from oma_server.nbd.model import STATE_ACTIVE, STATE_ERROR, STATE_PENDING, ExportInfo, ExportRecord, ReconcileReport
from oma_server.nbd.names import (
    validate_device_path,
    validate_export_name,
)
from oma_server.nbd.probe import ListingRefused, ProbeError, list_exports
from oma_server.nbd.process import SERVER_NAME, START_TIMEOUT_S, NbdkitProcess
from oma_server.nbd.table import check_conflicts, check_devices, load_existing, reconcile_links
from oma_server.nbd.verdict import ProbeStreak
from oma_server.security.nbd_tls import NbdTls
from oma_server.uninterruptible import finish

log = logger.bind(component="nbd")

_PROBE_FAILURES_BEFORE_RESTART = 3


class NbdExportManager:
    """Drives one real nbdkit serving named exports; see the module docstring for the design."""

    def __init__(
        self,
        config_dir: Path,
        listen: str = "127.0.0.1:10809",
        nbdkit_binary: str = SERVER_NAME,
        probe_interval_s: float = 2.0,
        *,
        advertise_host: str | None = None,
        tls: NbdTls | None = None,
        hide_export_list: bool = False,
    ) -> None:
        """`tls`: serve TLS with client certificates verified against the OMA's CA (security/nbd_tls.py).
        `hide_export_list`: refuse NBD_OPT_LIST to every client (see the module docstring)."""
        self.config_dir = Path(config_dir).absolute()
        self.host, self.port = parse_host_port(
            listen, "NBD listen address", reason="NBD_LISTEN_INVALID", port_zero=False
        )
        self.binary = nbdkit_binary
        self.probe_interval_s = probe_interval_s
        if advertise_host is None:
            advertise_host = socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host
        self.advertise_host = advertise_host
        self.links = ExportLinks(self.config_dir)
        self.exports_dir = self.links.directory
        self.tls = tls
        self.process = NbdkitProcess(
            nbdkit_binary,
            self.host,
            self.port,
            self.config_dir,
            self.exports_dir,
            tls.nbdkit_flags() if tls else None,
            hide_export_list=hide_export_list,
        )
        self._exports: dict[str, ExportRecord] = {}
        self._lock = asyncio.Lock()
        self._served: set[str] = set()
        self.probe_rounds = 0  # supervisor rounds done (probe, device check, verdict): tests wait on it
        self._ready_changed = asyncio.Event()
        self._probe_ok = False
        self._started = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public API

    @property
    def server_name(self) -> str:
        return SERVER_NAME

    @property
    def healthy(self) -> bool:
        """True if the server runs, the last probe succeeded and every export without a device error is served."""
        return (
            self._started
            and self._server_running()
            and self._probe_ok
            and {n for n, e in self._exports.items() if not e.error} <= self._served
        )

    @property
    def master_pid(self) -> int | None:
        """PID of the nbdkit process serving the exports."""
        return self.process.pid

    @property
    def restarts(self) -> int:
        """How many times this manager launched nbdkit (a take-over is no launch)."""
        return self.process.launches

    @property
    def adopted(self) -> bool:
        """The running nbdkit was taken over from an earlier OMA process."""
        return self.process.adopted

    def uri_for(self, name: str) -> str:
        host = f"[{self.advertise_host}]" if ":" in self.advertise_host else self.advertise_host
        # nbds: the client must speak TLS (libnbd refuses to go on without it); a client with a certificate uses TLS
        # on an nbd: URI too, where TLS is offered but not required.
        scheme = "nbds" if self.tls is not None and self.tls.required else "nbd"
        return f"{scheme}://{host}:{self.port}/{validate_export_name(name)}"

    def list_exports(self) -> list[ExportInfo]:
        return [self._info(e) for e in sorted(self._exports.values(), key=lambda e: e.name)]

    def get_export(self, name: str) -> ExportInfo:
        exp = self._exports.get(validate_export_name(name))
        if exp is None:
            raise ExportNotFound(
                f"NBD export {name!r} does not exist on this OMA; list exports to see what is served.",
                export=name,
            )
        return self._info(exp)

    async def start(self, desired: Mapping[str, str] | None = None) -> ReconcileReport | None:
        """Load the export links, take over (or replace) a leftover nbdkit, start it if needed, supervise it.

        With `desired` (name -> device path, e.g. from the database) the links are reconciled first. Raises
        NbdServerUnavailable / NbdPortInUse.
        """
        if self._started:
            return None
        self._stopping = False
        await asyncio.to_thread(self.links.prepare)
        await asyncio.to_thread(load_existing, self._exports, self.links)
        report = None
        async with self._lock:
            adopted = await self.process.take_over_leftover()
            cut = 0
            if desired is not None:
                report, cut = await reconcile_links(self._exports, self.links, desired, self._client_fds)
            if not adopted:
                await self._launch_locked("start")
            elif cut:  # the server we took over still serves clients of exports that are gone
                await self._cut_connections_locked("start", cut)
                if report is not None:
                    report.restarted = True
            await self._probe_until_served()
        self._started = True
        self._supervisor = asyncio.create_task(self._supervise(), name="nbd-supervisor")
        log.info(
            "NBD server started: nbdkit on {}:{} (pid {}{}) with {} export(s)",
            self.host,
            self.port,
            self.process.pid,
            ", taken over from an earlier OMA process" if self.adopted else "",
            len(self._exports),
        )
        return report

    async def stop(self, *, disconnect_clients: bool = True) -> None:
        """Stop supervising and end nbdkit and its connections (a stopped OMA leaves no process behind).

        `disconnect_clients` is accepted for callers of the nbd-server manager; nbdkit serves every connection
        in its one process, so its connections always end with it.
        """
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._supervisor = None
        async with self._lock:
            await self._terminate_locked()
            with contextlib.suppress(FileNotFoundError):
                self.process.pid_path.unlink()
        self._started = False
        log.info("nbdkit on {}:{} stopped", self.host, self.port)

    async def add_export(self, name: str, device_path: str) -> ExportInfo:
        """Export `device_path` as `name` (a symlink in the served directory); returns once a handshake lists it."""
        validate_export_name(name)
        dev = await asyncio.to_thread(validate_device_path, device_path)
        async with self._lock:
            check_conflicts(self._exports, name, dev)
            exp = ExportRecord(name, dev.path, dev.resolved, datetime.now(UTC))
            await asyncio.to_thread(self.links.write, exp.name, exp.device_path)
            self._exports[name] = exp
            if self._started:
                await self._probe_until_served(timeout=2.0)
        log.bind(export=name).info("NBD export added: {} -> {}", name, dev.path)
        return self._info(exp)

    async def remove_export(self, name: str, *, force: bool = False) -> None:
        """Stop serving `name`. Refused while clients are connected unless `force` (which restarts the server,
        cutting every connection: nbdkit cannot drop one)."""
        validate_export_name(name)
        async with self._lock:
            exp = self._exports.get(name)
            if exp is None:
                raise ExportNotFound(f"NBD export {name!r} does not exist; nothing to remove.", export=name)
            clients = await asyncio.to_thread(self._client_fds, exp)
            if clients and not force:
                raise ExportInUse(
                    f"NBD export {name!r} still has {len(clients)} connected client(s). Cancel the transfer "
                    "first, or remove with force to disconnect them.",
                    export=name,
                    clients=len(clients),
                )
            await asyncio.to_thread(self.links.delete, name)
            del self._exports[name]
            if clients and self._started:
                await self._cut_connections_locked(f"forced removal of {name}", len(clients))
            elif self._started:
                await self._probe_until_served(timeout=2.0)
        log.bind(export=name).info("NBD export removed: {} (disconnected {} client(s))", name, len(clients))

    async def reload_tls(self, reason: str) -> None:
        """Restart nbdkit so that it reads its certificates directory again (a new CRL): nbdkit loads it only at
        start. Every connection is cut; the copies resume from their last acknowledged point."""
        async with self._lock:
            if not self._started or self._stopping:
                return
            clients = 0
            for export in self._exports.values():
                clients += len(await asyncio.to_thread(self._client_fds, export))
            log.warning("Restarting nbdkit for {}: {} connection(s) are cut and will resume", reason, clients)
            await self._terminate_locked()
            await self._launch_locked(reason)
            await self._probe_until_served()

    async def reconcile(self, desired: Mapping[str, str]) -> ReconcileReport:
        """Make the served exports equal `desired` (name -> device path).

        Missing exports are created, strays removed, exports whose device path changed are replaced. Exports that
        cannot be created (bad name, missing device) are reported in `failed` and do not stop the rest. Only when
        a removed or replaced export has connected clients is the server restarted (`restarted`).
        """
        async with self._lock:
            report, cut = await reconcile_links(self._exports, self.links, desired, self._client_fds)
            if cut or not self._server_running():
                await self._cut_connections_locked("reconcile", cut)
                report.restarted = True
            elif report.changed:
                await self._probe_until_served(timeout=2.0)
        return report

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until nbdkit answers the handshake and lists every configured export."""
        deadline = time.monotonic() + timeout
        while not self.healthy:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(self._exports) - self._served)
                raise NbdServerUnavailable(
                    f"nbdkit on {self.host}:{self.port} did not become ready within {timeout:.1f}s "
                    f"(missing exports: {missing or 'none'}; pid {self.process.pid}). Check that nbdkit is installed "
                    f"and the port free, and {self.process.log_path}; the supervisor keeps retrying.",
                    listen=f"{self.host}:{self.port}",
                )
            self._ready_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_changed.wait(), min(remaining, 0.05))

    async def connected_clients(self, name: str) -> list[int]:
        """One entry per client connected to export `name` (nbdkit's file descriptors open on its device)."""
        exp = self._exports.get(validate_export_name(name))
        if exp is None:
            raise ExportNotFound(f"NBD export {name!r} does not exist.", export=name)
        return await asyncio.to_thread(self._client_fds, exp)

    # ------------------------------------------------------------------ internals: state

    def _info(self, exp: ExportRecord) -> ExportInfo:
        if exp.error:
            state = STATE_ERROR
        elif self._probe_ok and exp.name in self._served:
            state = STATE_ACTIVE
        else:
            state = STATE_PENDING
        return ExportInfo(
            name=exp.name,
            device_path=exp.device_path,
            uri=self.uri_for(exp.name),
            state=state,
            created_at=exp.created_at,
            resolved_path=exp.resolved_path,
            error=exp.error,
        )

    # ------------------------------------------------------------------ internals: the export table (table.py)

    def _client_fds(self, exp: ExportRecord) -> list[int]:
        """nbdkit's file descriptors open on the export's device: one per connected client."""
        return self.process.fds_open_on(exp.resolved_path)

    # ------------------------------------------------------------------ internals: process (process.py)

    def _server_running(self) -> bool:
        return self.process.running

    async def _launch_locked(self, reason: str) -> None:
        """Start nbdkit and wait until it listens. Lock held; no server of ours may be running.

        Finished even when cancelled (a stop during a crash recovery): cancelled half-way, the daemon would run
        with its pid not yet recorded, and the stop that follows would leave it behind."""
        self._forget_listing()
        await finish(self.process.launch(reason))

    async def _terminate_locked(self) -> None:
        """End our nbdkit and reap it. Lock held; finished even when cancelled (bounded: SIGTERM, then SIGKILL)."""
        self._forget_listing()
        await finish(self.process.terminate())

    def _forget_listing(self) -> None:
        self._served = set()
        self._probe_ok = False
        self._ready_changed.set()

    async def _cut_connections_locked(self, reason: str, clients: int) -> None:
        """Restart nbdkit: the only way to end connections to exports that were removed or re-pointed."""
        if clients:
            log.warning("Restarting nbdkit for {}: {} connection(s) to removed exports are cut", reason, clients)
        await self._terminate_locked()
        await self._launch_locked(reason)
        await self._probe_until_served()

    # ------------------------------------------------------------------ internals: supervision

    async def _probe(self, timeout: float) -> bool | None:
        """One handshake: True if it answered (the listing is kept), False if not, None if the export set changed
        while it ran (its listing may predate the change and is dropped)."""
        changes = self.links.changes
        try:
            names = await list_exports(
                self.host, self.port, timeout=timeout, tls=self.tls.probe_context() if self.tls else None
            )
        except ListingRefused:
            if not self.process.hide_export_list:
                return self._probe_failed("nbdkit refused NBD_OPT_LIST although its list is not hidden")
            # nbdkit answered the handshake (over TLS, with our probe's certificate verified) and hides its list as
            # told: in dir= mode it serves every link of the directory whose device exists, checked per round.
            names = list(self._exports)
        except ProbeError as exc:
            return self._probe_failed(str(exc))
        if changes != self.links.changes:
            return None
        self._served = set(names)
        self._probe_ok = True
        self._ready_changed.set()
        return True

    def _probe_failed(self, why: str) -> bool:
        self._probe_ok = False
        self._ready_changed.set()
        log.debug("NBD probe failed: {}", why)
        return False

    async def _probe_until_served(self, timeout: float = START_TIMEOUT_S) -> None:
        """Probe until the listing equals the links (a link to a missing device is not listed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._server_running():
            if await self._probe(timeout=2.0):
                expected = {n for n, e in self._exports.items() if not e.error}
                if expected <= self._served <= set(self._exports):
                    return
            await asyncio.sleep(0.005)

    async def _supervise(self) -> None:
        streak = ProbeStreak(_PROBE_FAILURES_BEFORE_RESTART)
        backoff = 0.1
        next_probe = time.monotonic() + self.probe_interval_s
        while not self._stopping:
            timeout = max(0.0, min(next_probe - time.monotonic(), 0.25 if not self.process.watched else 3600))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.exited.wait(), timeout)
            if self._stopping:
                return
            try:
                if self.process.exited.is_set() or not self._server_running():
                    await self._recover_from_exit()
                    backoff = 0.1
                    streak.reset()
                elif time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + self.probe_interval_s
                    await self._probe_round(streak)
            except asyncio.CancelledError:
                raise
            except DomainError as exc:
                log.error("nbdkit restart failed: {}; retrying in {:.1f}s", exc.message, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self.process.exited.set()
            except Exception:
                log.exception("NBD supervisor error; retrying in {:.1f}s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _recover_from_exit(self) -> None:
        """nbdkit died (crash, OOM, SIGKILL): start it again with every export."""
        async with self._lock:
            if self._stopping or (self._server_running() and not self.process.exited.is_set()):
                return
            log.error(
                "nbdkit (pid {}) on {}:{} exited unexpectedly; restarting it with {} export(s)",
                self.process.pid,
                self.host,
                self.port,
                len(self._exports),
            )
            self.process.exited.clear()
            await self._terminate_locked()  # reaps it
            await self._launch_locked("crash recovery")
            await self._probe_until_served()

    async def _probe_round(self, streak: ProbeStreak) -> None:
        """One handshake, the devices checked, a verdict; nbdkit restarted when the streak is due."""
        answered = await self._probe(timeout=max(1.0, self.probe_interval_s))
        if answered is None:
            return
        # Devices first: a replica detached since the last check has a dangling link nbdkit no longer lists;
        # that is the export's error, not nbdkit's (counting it restarted nbdkit under every other copy).
        await check_devices(self._exports)
        if answered:
            missing = streak.answered({n for n, e in self._exports.items() if not e.error} - self._served)
            if missing:
                log.warning(
                    "nbdkit does not list configured export(s) {} ({}/{})",
                    sorted(missing),
                    streak.failures,
                    streak.limit,
                )
        else:
            streak.failed()
            log.warning("NBD probe failed ({}/{})", streak.failures, streak.limit)
        if streak.due:
            async with self._lock:
                log.error("nbdkit failed {} probes in a row; restarting it", streak.failures)
                await self._cut_connections_locked("probe failures", 0)
            streak.reset()
        self.probe_rounds += 1
