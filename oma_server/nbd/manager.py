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

* nbdkit runs as a daemon (`--foreground` is unusable: a foreground nbdkit exits when its parent dies, which would
  cut every transfer when the OMA crashes). The OMA process makes itself a child subreaper (prctl), so the daemon
  is re-parented to it and reaped by it (no zombie); its exit is seen by a pidfd. Its stderr goes to `nbdkit.log`
  in the config directory (argument and bind errors come before it daemonises, with a non-zero exit).
* **A killed OMA** leaves nbdkit running with its connections. At the next start the manager finds it by the pid
  file and its command line: started with exactly the arguments this manager would use, it is **taken over**
  (watched by pidfd, never restarted: live transfers continue across the OMA restart); anything else of this
  config directory (other port, other binary, older layout) is replaced. Another program on the port is reported
  as NBD_PORT_IN_USE with its pid, as before.
* One process serves every connection (a thread each); the file plugin opens the export's file per connection and
  keeps it open, so `/proc/<pid>/fd` tells which exports have clients. Removing a symlink stops new connections to
  that name at once; a connected client keeps writing to its device. Removal with clients is refused unless forced;
  a forced removal (or a reconcile replacing a device that has clients) **restarts** the server, which cuts every
  connection — nbdkit has no way to drop one — and logs how many. The reference agent resumes a cut copy from its
  last acknowledged point.
* Supervision: the pidfd wakes the supervisor when nbdkit dies (crash, OOM, SIGKILL): it is restarted with
  back-off. Every `probe_interval_s` a real handshake (NBD_OPT_LIST) must answer, else nbdkit is restarted after
  repeated failures. Each export's device is re-checked; a vanished device puts the export in state "error"
  (nbdkit stops listing a dangling link by itself).
* `stop()` ends nbdkit (SIGTERM, then SIGKILL): a stopped OMA leaves no process behind.

Layout under `config_dir`: `exports/<name>` (symlink -> device path; the directory nbdkit serves, written by us
only), `nbdkit.pid`, `nbdkit.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from oma_server.errors import DomainError, InvalidArgument
from oma_server.nbd import procs
from oma_server.nbd.errors import (
    DeviceAlreadyExported,
    DeviceMissing,
    ExportExists,
    ExportInUse,
    ExportNotFound,
    NbdPortInUse,
    NbdServerUnavailable,
)
from oma_server.nbd.names import (
    DevicePath,
    check_device_path_syntax,
    is_export_link,
    validate_device_path,
    validate_export_name,
)
from oma_server.nbd.probe import ProbeError, list_exports
from oma_server.nbd.verdict import ProbeStreak

log = logger.bind(component="nbd")

STATE_PENDING = "pending"
STATE_ACTIVE = "active"
STATE_ERROR = "error"

SERVER_NAME = "nbdkit"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 3.0
_PROBE_FAILURES_BEFORE_RESTART = 3
_THREADS = 16  # nbdkit's default; several connections of several copies each keep many requests in flight


@dataclass(frozen=True)
class ExportInfo:
    """One export as callers see it."""

    name: str
    device_path: str
    uri: str
    state: str
    created_at: datetime
    resolved_path: str = ""
    error: str | None = None


@dataclass
class ReconcileReport:
    """What reconcile() changed; names in each list, failures with the reason."""

    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    restarted: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.created or self.removed or self.replaced)


@dataclass
class _Export:
    name: str
    device_path: str
    resolved_path: str
    created_at: datetime
    error: str | None = None


def parse_listen(listen: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:10809`) and check both parts."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise InvalidArgument(
            f"NBD listen address {listen!r} must be HOST:PORT, e.g. 127.0.0.1:10809.",
            reason="NBD_LISTEN_INVALID",
        )
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    port = int(port_text)
    if not host or not 0 < port < 65536 or any(c in host for c in "\n\r\0[]=#\\ "):
        raise InvalidArgument(
            f"NBD listen address {listen!r} must be HOST:PORT with a port in 1..65535.",
            reason="NBD_LISTEN_INVALID",
        )
    return host, port


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
    ) -> None:
        self.config_dir = Path(config_dir).absolute()
        self.host, self.port = parse_listen(listen)
        self.binary = nbdkit_binary
        self.probe_interval_s = probe_interval_s
        if advertise_host is None:
            advertise_host = socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host
        self.advertise_host = advertise_host
        self.exports_dir = self.config_dir / "exports"
        self.pid_path = self.config_dir / "nbdkit.pid"
        self.log_path = self.config_dir / "nbdkit.log"
        self._exports: dict[str, _Export] = {}
        self._lock = asyncio.Lock()
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._exited = asyncio.Event()
        self._served: set[str] = set()
        self.probe_rounds = 0  # supervisor rounds done (probe, device check, verdict): tests wait on it
        self._changes = 0  # bumped at every link change: a probe that overlapped one is not trusted
        self._ready_changed = asyncio.Event()
        self._probe_ok = False
        self._started = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self.restarts = 0
        self.adopted = False  # the running server was taken over from an earlier OMA process

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
        return self._pid

    def uri_for(self, name: str) -> str:
        host = f"[{self.advertise_host}]" if ":" in self.advertise_host else self.advertise_host
        return f"nbd://{host}:{self.port}/{validate_export_name(name)}"

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
        await asyncio.to_thread(self._prepare_dirs)
        await asyncio.to_thread(self._load_existing)
        report = None
        async with self._lock:
            adopted = await self._take_over_leftover()
            cut = 0
            if desired is not None:
                report, cut = await self._reconcile_links_locked(desired)
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
            self._pid,
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
                self.pid_path.unlink()
        self._started = False
        log.info("nbdkit on {}:{} stopped", self.host, self.port)

    async def add_export(self, name: str, device_path: str) -> ExportInfo:
        """Export `device_path` as `name` (a symlink in the served directory); returns once a handshake lists it."""
        validate_export_name(name)
        dev = await asyncio.to_thread(validate_device_path, device_path)
        async with self._lock:
            self._check_conflicts(name, dev)
            exp = _Export(name, dev.path, dev.resolved, datetime.now(UTC))
            await asyncio.to_thread(self._write_link, exp)
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
            await asyncio.to_thread(self._delete_link, name)
            del self._exports[name]
            if clients and self._started:
                await self._cut_connections_locked(f"forced removal of {name}", len(clients))
            elif self._started:
                await self._probe_until_served(timeout=2.0)
        log.bind(export=name).info("NBD export removed: {} (disconnected {} client(s))", name, len(clients))

    async def reconcile(self, desired: Mapping[str, str]) -> ReconcileReport:
        """Make the served exports equal `desired` (name -> device path).

        Missing exports are created, strays removed, exports whose device path changed are replaced. Exports that
        cannot be created (bad name, missing device) are reported in `failed` and do not stop the rest. Only when
        a removed or replaced export has connected clients is the server restarted (`restarted`).
        """
        async with self._lock:
            report, cut = await self._reconcile_links_locked(desired)
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
                    f"(missing exports: {missing or 'none'}; pid {self._pid}). Check that nbdkit is installed "
                    f"and the port free, and {self.log_path}; the supervisor keeps retrying.",
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

    def _info(self, exp: _Export) -> ExportInfo:
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

    def _check_conflicts(self, name: str, dev: DevicePath, ignore: set[str] | None = None) -> None:
        existing = self._exports.get(name)
        if existing is not None and name not in (ignore or set()):
            raise ExportExists(
                f"NBD export {name!r} already exists (device {existing.device_path}). Use it, or remove it "
                "first to re-create it.",
                export=name,
                device_path=existing.device_path,
            )
        for other in self._exports.values():
            if other.name in (ignore or set()) or other.name == name:
                continue
            if other.resolved_path == dev.resolved:
                raise DeviceAlreadyExported(
                    f"Device {dev.path!r} ({dev.resolved}) is already exported as {other.name!r}; two "
                    "exports of one device would let two writers corrupt it. Remove that export first.",
                    export=name,
                    other_export=other.name,
                    device_path=dev.path,
                )

    # ------------------------------------------------------------------ internals: links (blocking)

    def _prepare_dirs(self) -> None:
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        check_device_path_syntax(str(self.exports_dir))
        # Files of the nbd-server layout (before 0.3): nothing reads them any more.
        for stale in ("config", "probe.img", "nbd-server.pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.config_dir / stale).unlink()
        shutil.rmtree(self.config_dir / "exports.d", ignore_errors=True)

    def _write_link(self, exp: _Export) -> None:
        """Create (or atomically replace) the export's symlink: made beside the directory, renamed into it."""
        self._changes += 1
        tmp = self.config_dir / f".{exp.name}.link"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(exp.device_path)
        os.replace(tmp, self.exports_dir / exp.name)

    def _delete_link(self, name: str) -> None:
        self._changes += 1
        with contextlib.suppress(FileNotFoundError):
            (self.exports_dir / validate_export_name(name)).unlink()

    def _load_existing(self) -> None:
        """Rebuild the in-memory table from the export links; anything else in the directory is removed."""
        self._exports.clear()
        for path in sorted(self.exports_dir.iterdir()):
            target = _read_link(path) if is_export_link(path) else None
            if target is None:
                log.warning("Removing stray entry {} from the NBD export directory", path)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                continue
            created = datetime.fromtimestamp(path.lstat().st_mtime, UTC)
            exp = _Export(path.name, target, "", created)
            try:
                exp.resolved_path = validate_device_path(target).resolved
            except DomainError as exc:
                exp.error = exc.message
            self._exports[exp.name] = exp
            log.bind(export=exp.name).info("Loaded NBD export {} -> {}", exp.name, target)

    async def _reconcile_links_locked(self, desired: Mapping[str, str]) -> tuple[ReconcileReport, int]:
        """Rewrite the links to match `desired`; returns the report and how many clients lost their export."""
        report = ReconcileReport()
        cut = 0
        valid: dict[str, DevicePath] = {}
        for name, device in desired.items():
            try:
                validate_export_name(name)
                valid[name] = await asyncio.to_thread(validate_device_path, device)
            except DomainError as exc:
                report.failed[name] = exc.message
                log.bind(export=name).warning("Reconcile cannot create NBD export {}: {}", name, exc.message)
        for name in sorted(set(self._exports) - set(desired)):
            exp = self._exports.pop(name)
            await asyncio.to_thread(self._delete_link, name)
            cut += len(await asyncio.to_thread(self._client_fds, exp))
            report.removed.append(name)
            log.bind(export=name).warning("Reconcile removed stray NBD export {} ({})", name, exp.device_path)
        for name, dev in sorted(valid.items()):
            current = self._exports.get(name)
            if current is not None and current.device_path == dev.path and not current.error:
                current.resolved_path = dev.resolved
                report.unchanged.append(name)
                continue
            try:
                self._check_conflicts(name, dev, ignore={name})
            except DomainError as exc:
                report.failed[name] = exc.message
                continue
            if current is not None:
                if current.device_path != dev.path:
                    cut += len(await asyncio.to_thread(self._client_fds, current))
                report.replaced.append(name)
                log.bind(export=name).warning(
                    "Reconcile replaced NBD export {}: {} -> {}", name, current.device_path, dev.path
                )
            else:
                report.created.append(name)
            exp = _Export(name, dev.path, dev.resolved, datetime.now(UTC))
            await asyncio.to_thread(self._write_link, exp)
            self._exports[name] = exp
        return report, cut

    def _client_fds(self, exp: _Export) -> list[int]:
        """nbdkit's file descriptors open on the export's device: one per connected client."""
        if self._pid is None or not exp.resolved_path:
            return []
        return procs.fds_open_on(self._pid, exp.resolved_path)

    # ------------------------------------------------------------------ internals: process

    def _argv(self) -> list[str]:
        """The one command line of our nbdkit; a leftover server is taken over only if it has exactly this."""
        return [
            self.binary,
            "--ipaddr",
            self.host,
            "--port",
            str(self.port),
            "--pidfile",
            str(self.pid_path),
            "--threads",
            str(_THREADS),
            "--log=stderr",
            "file",
            f"dir={self.exports_dir}",
        ]

    def _server_running(self) -> bool:
        return self._pid is not None and procs.is_running(self._pid)

    async def _take_over_leftover(self) -> bool:
        """Adopt an nbdkit left by an earlier OMA of this config dir; replace one that differs. True if adopted."""
        wanted = tuple(self._argv())
        for info in await asyncio.to_thread(procs.server_processes, SERVER_NAME, str(self.exports_dir)):
            if info.cmdline == wanted and await asyncio.to_thread(procs.listens_on, info.pid, self.port):
                self._pid, self.adopted = info.pid, True
                self._watch(info.pid)
                log.warning(
                    "Took over nbdkit pid {} left by an earlier OMA process on this data dir (its connections "
                    "keep running)",
                    info.pid,
                )
                return True
            log.warning("Replacing nbdkit pid {} of this data dir started differently: {}", info.pid, info.cmdline)
            procs.kill(info.pid, signal.SIGKILL)
            await self._wait_exit(info.pid, _STOP_TIMEOUT_S)
        return False

    async def _port_holder_error(self) -> NbdPortInUse:
        holders = await asyncio.to_thread(procs.listening_pids, self.port)
        desc = []
        for pid in holders:
            info = await asyncio.to_thread(procs.read_proc, pid)
            desc.append(f"pid {pid} ({' '.join(info.cmdline) if info else '?'})")
        return NbdPortInUse(
            f"Port {self.port} on {self.host} is already in use by {', '.join(desc) or 'another program'}; "
            "nbdkit cannot listen there. Stop that program or configure another --nbd-listen port.",
            listen=f"{self.host}:{self.port}",
        )

    async def _launch_locked(self, reason: str) -> None:
        """Start nbdkit and wait until it listens. Lock held; no server of ours may be running."""
        t0 = time.perf_counter()
        self._probe_ok = False
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        if await asyncio.to_thread(procs.listening_pids, self.port):
            raise await self._port_holder_error()
        # nbdkit daemonises; as a subreaper this process becomes its parent, so it can reap it (no zombie).
        procs.become_subreaper()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        stderr = await asyncio.to_thread(open, self.log_path, "ab")
        with stderr:
            try:
                launcher = await asyncio.create_subprocess_exec(
                    *self._argv(),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    start_new_session=True,  # a Ctrl-C of the OMA's terminal is the OMA's to handle, not nbdkit's
                )
            except FileNotFoundError:
                raise NbdServerUnavailable(
                    f"nbdkit binary {self.binary!r} not found. Install the Debian package nbdkit "
                    "(`apt-get install nbdkit`).",
                    binary=self.binary,
                ) from None
        try:
            code = await asyncio.wait_for(launcher.wait(), _START_TIMEOUT_S)  # it returns once the daemon runs
        except TimeoutError:
            launcher.kill()
            await launcher.wait()
            code = -1
        if code != 0:  # bad arguments, bind errors: nbdkit checks them before it daemonises
            text = await asyncio.to_thread(_log_tail, self.log_path, offset)
            holders = await asyncio.to_thread(procs.listening_pids, self.port)
            if "Address already in use" in text or holders:
                raise await self._port_holder_error()
            raise NbdServerUnavailable(
                f"nbdkit refused to start (exit {code}) on {self.host}:{self.port}: {text or 'no message'}. Check "
                f"that the address is local and the port free ({self.log_path}).",
                listen=f"{self.host}:{self.port}",
                exit_code=code,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        pid: int | None = None
        while pid is None or not await asyncio.to_thread(procs.listens_on, pid, self.port):
            if pid is None:
                pid = await asyncio.to_thread(_read_pid, self.pid_path)
            if (pid is not None and not procs.is_running(pid)) or time.monotonic() > deadline:
                if pid is not None:
                    self._pid = pid
                    await self._terminate_locked()
                raise NbdServerUnavailable(
                    f"nbdkit daemonised but did not listen on {self.host}:{self.port} (pid {pid}); see "
                    f"{self.log_path}.",
                    listen=f"{self.host}:{self.port}",
                )
            await asyncio.sleep(0.002)
        self._pid, self.adopted = pid, False
        self._watch(pid)
        self.restarts += 1
        log.debug("nbdkit launched for {} in {:.1f} ms (pid {})", reason, (time.perf_counter() - t0) * 1000, pid)

    async def _terminate_locked(self) -> None:
        """End our nbdkit (SIGTERM, then SIGKILL) and reap it. Lock held."""
        self._unwatch()
        pid = self._pid
        self._pid = None
        self._served = set()
        self._probe_ok = False
        self._ready_changed.set()
        if pid is None:
            return
        if procs.is_running(pid):
            procs.kill(pid, signal.SIGTERM)
            await self._wait_exit(pid, _STOP_TIMEOUT_S)
        if procs.is_running(pid):
            procs.kill(pid, signal.SIGKILL)
            await self._wait_exit(pid, _STOP_TIMEOUT_S)
        procs.reap(pid)

    async def _cut_connections_locked(self, reason: str, clients: int) -> None:
        """Restart nbdkit: the only way to end connections to exports that were removed or re-pointed."""
        if clients:
            log.warning("Restarting nbdkit for {}: {} connection(s) to removed exports are cut", reason, clients)
        await self._terminate_locked()
        await self._launch_locked(reason)
        await self._probe_until_served()

    async def _wait_exit(self, pid: int, timeout: float) -> None:
        try:
            fd = os.pidfd_open(pid)  # readable once the process has exited
        except ProcessLookupError:
            return
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited, timeout)
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    def _watch(self, pid: int) -> None:
        self._exited.clear()
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return  # the supervisor falls back to polling /proc
        self._pidfd = fd
        asyncio.get_running_loop().add_reader(fd, self._on_exit, pid)

    def _unwatch(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _on_exit(self, pid: int) -> None:
        if pid == self._pid:
            self._unwatch()
            self._exited.set()

    # ------------------------------------------------------------------ internals: supervision

    async def _probe(self, timeout: float) -> bool | None:
        """One handshake: True if it answered (the listing is kept), False if not, None if the export set changed
        while it ran (its listing may predate the change and is dropped)."""
        changes = self._changes
        try:
            names = await list_exports(self.host, self.port, timeout=timeout)
        except ProbeError as exc:
            self._probe_ok = False
            self._ready_changed.set()
            log.debug("NBD probe failed: {}", exc)
            return False
        if changes != self._changes:
            return None
        self._served = set(names)
        self._probe_ok = True
        self._ready_changed.set()
        return True

    async def _probe_until_served(self, timeout: float = _START_TIMEOUT_S) -> None:
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
            timeout = max(0.0, min(next_probe - time.monotonic(), 0.25 if self._pidfd is None else 3600))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), timeout)
            if self._stopping:
                return
            try:
                if self._exited.is_set() or not self._server_running():
                    async with self._lock:
                        if self._stopping or (self._server_running() and not self._exited.is_set()):
                            continue
                        log.error(
                            "nbdkit (pid {}) on {}:{} exited unexpectedly; restarting it with {} export(s)",
                            self._pid,
                            self.host,
                            self.port,
                            len(self._exports),
                        )
                        self._exited.clear()
                        await self._terminate_locked()  # reaps it
                        await self._launch_locked("crash recovery")
                        await self._probe_until_served()
                    backoff = 0.1
                    streak.reset()
                    continue
                if time.monotonic() < next_probe:
                    continue
                next_probe = time.monotonic() + self.probe_interval_s
                answered = await self._probe(timeout=max(1.0, self.probe_interval_s))
                if answered is None:
                    continue
                # Devices first: a replica detached since the last check has a dangling link nbdkit no longer lists;
                # that is the export's error, not nbdkit's (counting it restarted nbdkit under every other copy).
                await self._check_devices()
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
            except asyncio.CancelledError:
                raise
            except DomainError as exc:
                log.error("nbdkit restart failed: {}; retrying in {:.1f}s", exc.message, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._exited.set()
            except Exception:
                log.exception("NBD supervisor error; retrying in {:.1f}s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _check_devices(self) -> None:
        for exp in list(self._exports.values()):
            try:
                dev = await asyncio.to_thread(validate_device_path, exp.device_path)
            except DeviceMissing as exc:
                if exp.error != exc.message:
                    log.bind(export=exp.name).error("NBD export {}: {}", exp.name, exc.message)
                exp.error = exc.message
            except DomainError as exc:
                exp.error = exc.message
            else:
                if exp.error:
                    log.bind(export=exp.name).info("NBD export {}: device is back", exp.name)
                exp.error = None
                exp.resolved_path = dev.resolved


def _read_link(path: Path) -> str | None:
    """The link's target if it is one we could have written, else None (a stray)."""
    if not path.is_symlink():
        return None
    try:
        target = os.readlink(path)
        check_device_path_syntax(target)
    except (OSError, DomainError):
        return None
    return target


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _log_tail(path: Path, offset: int) -> str:
    """What nbdkit wrote to its log since `offset` (its last lines), for an error message."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-3:])[-500:]
