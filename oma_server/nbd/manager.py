"""NBD export manager: one supervised nbd-server on one port, one include file per export.

What nbd-server 3.24 (Debian bookworm, `nbd-server -V` = 3.24) actually does — measured on this machine with
the real binary (experiment scripts and numbers summarised here; see also the README section on NBD):

* **Process model.** The master accepts connections and forks **one child process per client connection**;
  the child negotiates and serves that connection to its end. `-d` (`--dont-fork`) is *not* a foreground
  mode: it also disables the per-client fork, so the server handles exactly one connection inline and
  **exits when that client disconnects** (a multi-connection `nbdcopy` hangs on its 2nd connection). The only
  usable mode is the daemonising one: the launcher exits 0 at once after `daemon()`, the master writes the
  `-p` PID file and logs to syslog only. So the master is never our child; we watch it with a pidfd
  (readable when it exits) plus a periodic NBD handshake probe. Config syntax errors are printed by the
  launcher on stderr (exit 1); bind errors happen after daemonising (the master just exits).
* **includedir** in `[generic]` is honoured: every `*.conf` in it is read at start. With no export at all
  nbd-server refuses to start ("No configured exports; quitting"), so the base config always carries a small
  read-only probe export.
* **SIGHUP (a) added include file:** the new export is served — when the master survives. The reload path
  is broken in 3.24: after `parse_cfile` it aborts with glibc `free(): invalid pointer` (SIGABRT) in 2-7 of
  15 runs of three reloads each (uninitialised generic-config pointers freed), with or without `listenaddr`
  / `allowlist`, even for a reload that changes nothing. A heap bug like that may also corrupt silently.
* **SIGHUP (b) removed export, client connected to it:** the removal is ignored — reload only *appends*
  sections whose name is new ("Reconfiguration does not modify any existing export, it only appends new
  ones", nbd-server(1)); the export stays listed and connectable, its client is untouched. Changing an
  existing export's device path and reloading is ignored as well: the old path keeps being served (the
  "stale device mapping" the replaced system suffered from).
* **SIGHUP (c) removed export while a client streams into another export:** that stream is unaffected (it
  lives in its own child process); the removed export is still served.
* **SIGKILL of the master** leaves every per-client child running: an `nbdcopy` of 256 MiB into export A
  continued and finished byte-identical while the master was killed and a new master with a different config
  was started; the children do not hold the listening socket, so the new master binds at once. SIGTERM, by
  contrast, makes the master kill all its children (every live transfer dies).
* **Start-up cost:** the launcher returns in ~4 ms and the port is bound almost at once, but the master
  generates GnuTLS DH parameters before entering its accept loop: the first greeting comes 80-450 ms after
  start. Connections made meanwhile wait in the listen backlog (10) and are then served.

Design chosen from this:

* **Never SIGHUP.** Every change of the export set (add, remove, replace, reconcile batch) is applied by a
  *handover restart*: write the include files atomically, SIGKILL the master (never SIGTERM), wait for it to
  exit, start a new master on the same port. Live transfers into other exports continue in their children;
  the new master serves exactly the files on disk, so removals are real and a re-used name can never keep
  serving a stale device. New connections see the port closed only for the few milliseconds between the
  old master's exit and the new bind, and wait in the backlog while the new master initialises. Exports are
  "pending" from the write until the probe sees them listed, then "active".
* **Removal with connected clients** is refused (NBD_EXPORT_IN_USE) unless forced; forced removal (and
  reconcile removing strays) disconnects exactly the children that hold the export's device open.
* One nbd-server per export (one port each) was rejected: the VMA side and firewalls expect one NBD port,
  each server would still pay the DH start-up cost, and it would not be faster for add.
* **Supervision:** the master's pidfd wakes the supervisor when it dies (crash, OOM, SIGKILL) and it is
  restarted with back-off; every `probe_interval_s` a real handshake (NBD_OPT_LIST) must list every
  configured export, else the master is restarted after repeated failures. Each export's device is re-checked
  too; a vanished device puts the export in state "error".
* **PID tracking:** the master writes `config_dir/nbd-server.pid`; at start, a live nbd-server using this
  config (left by a crashed OMA) is replaced (SIGKILL: its client connections keep running), and any other
  process holding the port is reported as NBD_PORT_IN_USE with its pid.

Layout under `config_dir`: `config` (base: [generic] + probe export), `exports.d/<name>.conf` (one per
export, written by us only), `probe.img`, `nbd-server.pid`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
    PROBE_EXPORT_NAME,
    DevicePath,
    check_device_path_syntax,
    config_file_name,
    is_export_file,
    validate_device_path,
    validate_export_name,
)
from oma_server.nbd.probe import ProbeError, list_exports

log = logger.bind(component="nbd")

STATE_PENDING = "pending"
STATE_ACTIVE = "active"
STATE_ERROR = "error"

_FILE_HEADER = "# Written by the OMA NBD export manager. Do not edit: the manager rewrites or removes it.\n"
_START_TIMEOUT_S = 10.0
_PROBE_FAILURES_BEFORE_RESTART = 3


@dataclass(frozen=True)
class ExportInfo:
    """One export as callers see it."""

    name: str
    device_path: str
    uri: str
    state: str
    created_at: datetime
    readonly: bool = False
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
    readonly: bool
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
    """Drives one real nbd-server serving named exports; see the module docstring for the design."""

    def __init__(
        self,
        config_dir: Path,
        listen: str = "127.0.0.1:10809",
        nbd_server_binary: str = "nbd-server",
        probe_interval_s: float = 2.0,
        *,
        advertise_host: str | None = None,
    ) -> None:
        self.config_dir = Path(config_dir).absolute()
        self.host, self.port = parse_listen(listen)
        self.binary = nbd_server_binary
        self.probe_interval_s = probe_interval_s
        if advertise_host is None:
            advertise_host = socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host
        self.advertise_host = advertise_host
        self.config_path = self.config_dir / "config"
        self.exports_dir = self.config_dir / "exports.d"
        self.pid_path = self.config_dir / "nbd-server.pid"
        self.probe_image = self.config_dir / "probe.img"
        self._exports: dict[str, _Export] = {}
        self._lock = asyncio.Lock()
        self._master_pid: int | None = None
        self._pidfd: int | None = None
        self._master_exited = asyncio.Event()
        self._generation = 0
        self._served: set[str] = set()
        self._served_generation = -1
        self._ready_changed = asyncio.Event()
        self._probe_ok = False
        self._started = False
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._readiness: asyncio.Task[None] | None = None
        self._to_disconnect: list[tuple[_Export, list[int]]] = []
        self.restarts = 0

    # ------------------------------------------------------------------ public API

    @property
    def healthy(self) -> bool:
        """True if the master runs, the last probe succeeded and every configured export is served."""
        return (
            self._started
            and self._master_pid is not None
            and procs.is_running(self._master_pid)
            and self._probe_ok
            and self._served_generation == self._generation
            and set(self._exports) <= self._served
        )

    @property
    def master_pid(self) -> int | None:
        return self._master_pid

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
        """Write the base config, take over a leftover server, start nbd-server and the supervisor.

        Existing include files are loaded; with `desired` (name -> device path, e.g. from the database) they
        are reconciled before the first launch. Raises NbdServerUnavailable / NbdPortInUse.
        """
        if self._started:
            return None
        self._stopping = False
        await asyncio.to_thread(self._prepare_dirs)
        await self._take_over_leftover()
        await asyncio.to_thread(self._load_existing)
        report = None
        async with self._lock:
            if desired is not None:
                report = await self._reconcile_files_locked(desired)
            await self._restart_locked("start")
        self._started = True
        self._supervisor = asyncio.create_task(self._supervise(), name="nbd-supervisor")
        log.info(
            "nbd-server started on {}:{} (pid {}) with {} export(s)",
            self.host,
            self.port,
            self._master_pid,
            len(self._exports),
        )
        return report

    async def stop(self, *, disconnect_clients: bool = False) -> None:
        """Stop supervising and stop the master.

        By default live client connections keep running to their end (the master is SIGKILLed, its
        children are not); `disconnect_clients=True` ends them as well (SIGTERM to the master, which kills
        its children, then any child of an earlier master still using this config).
        """
        self._stopping = True
        for task in (self._supervisor, self._readiness):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._supervisor = self._readiness = None
        async with self._lock:
            self._unwatch_master()
            pid = self._master_pid
            if pid is not None and procs.is_running(pid):
                procs.kill(pid, signal.SIGTERM if disconnect_clients else signal.SIGKILL)
                await self._wait_exit(pid, 3.0)
                if procs.is_running(pid):
                    procs.kill(pid, signal.SIGKILL)
                    await self._wait_exit(pid, 2.0)
            if disconnect_clients:
                for info in await asyncio.to_thread(procs.nbd_server_processes, self.config_path):
                    procs.kill(info.pid, signal.SIGKILL)
            self._master_pid = None
            self._served = set()
            self._probe_ok = False
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
        self._started = False
        log.info("nbd-server on {}:{} stopped (disconnect_clients={})", self.host, self.port, disconnect_clients)

    async def add_export(self, name: str, device_path: str, *, readonly: bool = False) -> ExportInfo:
        """Export `device_path` as `name`; returns once nbd-server has been restarted with it (state pending
        until the probe sees it served; `wait_ready()` waits for that)."""
        validate_export_name(name)
        dev = await asyncio.to_thread(validate_device_path, device_path)
        async with self._lock:
            self._check_conflicts(name, dev)
            exp = _Export(name, dev.path, dev.resolved, readonly, datetime.now(UTC))
            await asyncio.to_thread(self._write_export_file, exp)
            self._exports[name] = exp
            try:
                await self._restart_locked(f"add {name}")
            except DomainError:
                self._exports.pop(name, None)
                await asyncio.to_thread(self._delete_export_file, name)
                raise
        log.bind(export=name).info("NBD export added: {} -> {} (readonly={})", name, dev.path, readonly)
        return self._info(exp)

    async def remove_export(self, name: str, *, force: bool = False) -> None:
        """Stop serving `name`. Refused while clients are connected unless `force` (which disconnects them)."""
        validate_export_name(name)
        async with self._lock:
            exp = self._exports.get(name)
            if exp is None:
                raise ExportNotFound(f"NBD export {name!r} does not exist; nothing to remove.", export=name)
            clients = await asyncio.to_thread(self._client_pids, exp)
            if clients and not force:
                raise ExportInUse(
                    f"NBD export {name!r} still has {len(clients)} connected client(s) (nbd-server pids "
                    f"{', '.join(map(str, clients))}). Cancel the transfer first, or remove with force to "
                    "disconnect them.",
                    export=name,
                    clients=len(clients),
                )
            await asyncio.to_thread(self._delete_export_file, name)
            del self._exports[name]
            await self._restart_locked(f"remove {name}")
            await self._disconnect(exp, clients)
        log.bind(export=name).info("NBD export removed: {} (disconnected {} client(s))", name, len(clients))

    async def reconcile(self, desired: Mapping[str, str]) -> ReconcileReport:
        """Make the served exports equal `desired` (name -> device path) with one restart at most.

        Missing exports are created, strays removed (their clients disconnected), exports whose device path
        changed are replaced. Exports that cannot be created (bad name, missing device) are reported in
        `failed` and do not stop the rest.
        """
        async with self._lock:
            report = await self._reconcile_files_locked(desired)
            if report.changed or not self._master_running():
                await self._restart_locked("reconcile")
                report.restarted = True
                await self._disconnect_pending()
        return report

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the current nbd-server answers the handshake and lists every configured export."""
        deadline = time.monotonic() + timeout
        while not self.healthy:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(self._exports) - self._served)
                raise NbdServerUnavailable(
                    f"nbd-server on {self.host}:{self.port} did not become ready within {timeout:.1f}s "
                    f"(missing exports: {missing or 'none'}; master pid {self._master_pid}). Check that "
                    "nbd-server is installed and the port is free; the supervisor keeps retrying.",
                    listen=f"{self.host}:{self.port}",
                )
            self._ready_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_changed.wait(), min(remaining, 0.05))

    async def connected_clients(self, name: str) -> list[int]:
        """PIDs of the nbd-server children currently serving export `name`."""
        exp = self._exports.get(validate_export_name(name))
        if exp is None:
            raise ExportNotFound(f"NBD export {name!r} does not exist.", export=name)
        return await asyncio.to_thread(self._client_pids, exp)

    # ------------------------------------------------------------------ internals: state

    def _info(self, exp: _Export) -> ExportInfo:
        if exp.error:
            state = STATE_ERROR
        elif self._served_generation == self._generation and exp.name in self._served:
            state = STATE_ACTIVE
        else:
            state = STATE_PENDING
        return ExportInfo(
            name=exp.name,
            device_path=exp.device_path,
            uri=self.uri_for(exp.name),
            state=state,
            created_at=exp.created_at,
            readonly=exp.readonly,
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

    # ------------------------------------------------------------------ internals: files (blocking)

    def _prepare_dirs(self) -> None:
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        if not self.probe_image.exists() or self.probe_image.stat().st_size != 4096:
            self.probe_image.write_bytes(b"\0" * 4096)
        host = self.host
        text = (
            _FILE_HEADER
            + "[generic]\n"
            + f"port = {self.port}\n"
            + f"listenaddr = {host}\n"
            + "allowlist = true\n"
            + f"includedir = {self.exports_dir}\n"
            + f"[{PROBE_EXPORT_NAME}]\n"
            + f"exportname = {self.probe_image}\n"
            + "readonly = true\n"
        )
        check_device_path_syntax(str(self.exports_dir))
        check_device_path_syntax(str(self.probe_image))
        _atomic_write(self.config_path, text)

    def _write_export_file(self, exp: _Export) -> None:
        text = (
            _FILE_HEADER
            + f"# created_at = {exp.created_at.isoformat()}\n"
            + f"[{exp.name}]\n"
            + f"exportname = {exp.device_path}\n"
            + f"readonly = {'true' if exp.readonly else 'false'}\n"
            + "flush = true\n"
            + "splice = true\n"
        )
        _atomic_write(self.exports_dir / config_file_name(exp.name), text)

    def _delete_export_file(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.exports_dir / config_file_name(name)).unlink()

    def _load_existing(self) -> None:
        """Rebuild the in-memory table from exports.d; unreadable or foreign files are removed as strays."""
        self._exports.clear()
        for path in sorted(self.exports_dir.iterdir()):
            exp = _parse_export_file(path) if path.is_file() and is_export_file(path) else None
            if exp is None:
                log.warning("Removing stray file {} from the NBD include directory", path)
                if path.is_dir() and not path.is_symlink():
                    continue
                path.unlink(missing_ok=True)
                continue
            try:
                dev = validate_device_path(exp.device_path)
                exp.resolved_path = dev.resolved
            except DomainError as exc:
                exp.error = exc.message
            self._exports[exp.name] = exp
            log.bind(export=exp.name).info("Loaded NBD export {} -> {}", exp.name, exp.device_path)

    async def _reconcile_files_locked(self, desired: Mapping[str, str]) -> ReconcileReport:
        report = ReconcileReport()
        valid: dict[str, DevicePath] = {}
        for name, device in desired.items():
            try:
                validate_export_name(name)
                valid[name] = await asyncio.to_thread(validate_device_path, device)
            except DomainError as exc:
                report.failed[name] = exc.message
                log.bind(export=name).warning("Reconcile cannot create NBD export {}: {}", name, exc.message)
        self._to_disconnect = []
        for name in sorted(set(self._exports) - set(desired)):
            exp = self._exports.pop(name)
            await asyncio.to_thread(self._delete_export_file, name)
            self._to_disconnect.append((exp, await asyncio.to_thread(self._client_pids, exp)))
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
                self._to_disconnect.append((current, await asyncio.to_thread(self._client_pids, current)))
                report.replaced.append(name)
                log.bind(export=name).warning(
                    "Reconcile replaced NBD export {}: {} -> {}", name, current.device_path, dev.path
                )
            else:
                report.created.append(name)
                log.bind(export=name).warning("Reconcile recreated missing NBD export {} -> {}", name, dev.path)
            exp = _Export(name, dev.path, dev.resolved, False, datetime.now(UTC))
            if current is not None:
                exp.readonly = current.readonly
            await asyncio.to_thread(self._write_export_file, exp)
            self._exports[name] = exp
        return report

    async def _disconnect_pending(self) -> None:
        pending, self._to_disconnect = self._to_disconnect, []
        for exp, pids in pending:
            await self._disconnect(exp, pids)

    def _client_pids(self, exp: _Export) -> list[int]:
        """Children (of any master using our config) that hold this export's device open."""
        targets = {exp.resolved_path} if exp.resolved_path else set()
        with contextlib.suppress(OSError):
            targets.add(os.path.realpath(exp.device_path))
        pids = []
        for info in procs.nbd_server_processes(self.config_path):
            if info.pid != self._master_pid and procs.open_files(info.pid) & targets:
                pids.append(info.pid)
        return pids

    async def _disconnect(self, exp: _Export, pids: list[int]) -> None:
        if not pids:
            return
        # Children of the new master may have opened the device meanwhile only if the export still exists.
        for pid in pids:
            procs.kill(pid, signal.SIGKILL)
        log.bind(export=exp.name).warning(
            "Disconnected {} NBD client(s) of removed export {} (pids {})", len(pids), exp.name, pids
        )

    # ------------------------------------------------------------------ internals: process

    def _master_running(self) -> bool:
        return self._master_pid is not None and procs.is_running(self._master_pid)

    async def _take_over_leftover(self) -> None:
        pid = await asyncio.to_thread(procs.read_pidfile, self.pid_path)
        if pid is not None:
            info = await asyncio.to_thread(procs.read_proc, pid)
            if info and info.state not in ("Z", "X") and procs.is_nbd_server_for(info, self.config_path):
                log.warning(
                    "Found nbd-server pid {} left by a previous OMA run on this config; replacing it "
                    "(its client connections keep running)",
                    pid,
                )
                procs.kill(pid, signal.SIGKILL)
                await self._wait_exit(pid, 3.0)
        for holder in await asyncio.to_thread(procs.listening_pids, self.port):
            info = await asyncio.to_thread(procs.read_proc, holder)
            if info and procs.is_nbd_server_for(info, self.config_path):
                log.warning(
                    "nbd-server pid {} (our config, no pid file) holds port {}; replacing it", holder, self.port
                )
                procs.kill(holder, signal.SIGKILL)
                await self._wait_exit(holder, 3.0)

    async def _port_holder_error(self) -> NbdPortInUse:
        holders = await asyncio.to_thread(procs.listening_pids, self.port)
        desc = []
        for pid in holders:
            info = await asyncio.to_thread(procs.read_proc, pid)
            desc.append(f"pid {pid} ({' '.join(info.cmdline) if info else '?'})")
        return NbdPortInUse(
            f"Port {self.port} on {self.host} is already in use by {', '.join(desc) or 'another program'}; "
            "nbd-server cannot listen there. Stop that program or configure another --nbd-listen port.",
            listen=f"{self.host}:{self.port}",
        )

    async def _restart_locked(self, reason: str) -> None:
        """Handover restart: SIGKILL the master (children keep serving), start a new one. Lock held."""
        t0 = time.perf_counter()
        old = self._master_pid
        self._unwatch_master()
        if old is not None and procs.is_running(old):
            procs.kill(old, signal.SIGKILL)
            await self._wait_exit(old, 3.0)
        self._master_pid = None
        self._generation += 1
        self._probe_ok = False
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        await self._free_port()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-C",
                str(self.config_path),
                "-p",
                str(self.pid_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise NbdServerUnavailable(
                f"nbd-server binary {self.binary!r} not found. Install the Debian package nbd-server "
                "(`apt-get install nbd-server`).",
                binary=self.binary,
            ) from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), _START_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            raise NbdServerUnavailable(
                f"nbd-server did not daemonise within {_START_TIMEOUT_S:.0f}s; check {self.config_path}.",
            ) from None
        if proc.returncode != 0:
            text = (err or out).decode("utf-8", "replace").strip()
            raise NbdServerUnavailable(
                f"nbd-server refused to start (exit {proc.returncode}): {text[-500:]}. Check "
                f"{self.config_path} and the files in {self.exports_dir}.",
                exit_code=proc.returncode,
            )
        pid = await self._wait_for_master()
        self._master_pid = pid
        self._watch_master(pid)
        self.restarts += 1
        log.debug(
            "nbd-server restarted for {} in {:.1f} ms (pid {}, {} exports)",
            reason,
            (time.perf_counter() - t0) * 1000,
            pid,
            len(self._exports),
        )
        if self._readiness is not None:
            self._readiness.cancel()
        self._readiness = asyncio.create_task(self._track_readiness(self._generation), name="nbd-readiness")

    async def _free_port(self) -> None:
        """Make sure nothing listens on our port before a new master binds it.

        A per-client child keeps the master's listening socket until its negotiation succeeds (nbd-server
        3.24 closes it only then), so a child caught mid-handshake when the master was killed would keep the
        port bound with nobody accepting. Such children cannot finish anyway (they ask the dead master about
        the export), so they are killed; established transfers have closed the socket and are untouched.
        Anything else on the port is reported as NBD_PORT_IN_USE.
        """
        for _ in range(3):
            holders = await asyncio.to_thread(procs.listening_pids, self.port)
            if not holders:
                return
            ours = []
            for pid in holders:
                info = await asyncio.to_thread(procs.read_proc, pid)
                if info is not None and procs.is_nbd_server_for(info, self.config_path):
                    ours.append(pid)
            if len(ours) < len(holders):
                raise await self._port_holder_error()
            for pid in ours:
                log.debug("Killing nbd-server pid {} still holding port {} (mid-handshake)", pid, self.port)
                procs.kill(pid, signal.SIGKILL)
            for pid in ours:
                await self._wait_exit(pid, 2.0)
        raise await self._port_holder_error()

    async def _wait_for_master(self) -> int:
        deadline = time.monotonic() + _START_TIMEOUT_S
        pid: int | None = None
        while time.monotonic() < deadline:
            if pid is None:
                pid = procs.read_pidfile(self.pid_path)
            if pid is not None:
                if not procs.is_running(pid):
                    break
                if await asyncio.to_thread(procs.listens_on, pid, self.port):
                    return pid
            await asyncio.sleep(0.002)
        if pid is not None and procs.is_running(pid):
            procs.kill(pid, signal.SIGKILL)
        if await asyncio.to_thread(procs.listening_pids, self.port):
            raise await self._port_holder_error()
        raise NbdServerUnavailable(
            f"nbd-server exited right after start or never listened on {self.host}:{self.port} (pid {pid}). "
            "It logs to syslog only: check that the address is local and the port free, and the syslog.",
            listen=f"{self.host}:{self.port}",
        )

    async def _wait_exit(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not procs.is_running(pid):
                return
            await asyncio.sleep(0.001)

    def _watch_master(self, pid: int) -> None:
        self._master_exited.clear()
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return  # the supervisor falls back to polling /proc
        self._pidfd = fd
        asyncio.get_running_loop().add_reader(fd, self._on_master_exit, pid)

    def _unwatch_master(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _on_master_exit(self, pid: int) -> None:
        if pid == self._master_pid:
            self._unwatch_master()
            self._master_exited.set()

    # ------------------------------------------------------------------ internals: supervision

    async def _track_readiness(self, generation: int) -> None:
        """After a restart: probe quickly until the new master lists every configured export."""
        while generation == self._generation and not self._stopping:
            try:
                names = await list_exports(self.host, self.port, timeout=2.0)
            except ProbeError:
                await asyncio.sleep(0.01)
                continue
            self._note_probe(generation, names)
            if set(self._exports) <= self._served:
                return
            await asyncio.sleep(0.01)

    def _note_probe(self, generation: int, names: list[str]) -> None:
        if generation != self._generation:
            return
        self._served = set(names) - {PROBE_EXPORT_NAME}
        self._served_generation = generation
        self._probe_ok = True
        self._ready_changed.set()

    async def _supervise(self) -> None:
        failures = 0
        backoff = 0.1
        next_probe = time.monotonic() + self.probe_interval_s
        while not self._stopping:
            timeout = max(0.0, min(next_probe - time.monotonic(), 0.25 if self._pidfd is None else 3600))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._master_exited.wait(), timeout)
            if self._stopping:
                return
            try:
                if self._master_exited.is_set() or not self._master_running():
                    async with self._lock:
                        if self._stopping or self._master_running():
                            continue
                        log.error(
                            "nbd-server (pid {}) on {}:{} exited unexpectedly; restarting it with {} export(s)",
                            self._master_pid,
                            self.host,
                            self.port,
                            len(self._exports),
                        )
                        self._master_exited.clear()
                        self._probe_ok = False
                        self._ready_changed.set()
                        await self._restart_locked("crash recovery")
                    backoff = 0.1
                    failures = 0
                    continue
                if time.monotonic() < next_probe:
                    continue
                next_probe = time.monotonic() + self.probe_interval_s
                generation = self._generation
                try:
                    names = await list_exports(self.host, self.port, timeout=max(1.0, self.probe_interval_s))
                except ProbeError as exc:
                    failures += 1
                    self._probe_ok = False
                    self._ready_changed.set()
                    log.warning("NBD probe failed ({}/{}): {}", failures, _PROBE_FAILURES_BEFORE_RESTART, exc)
                else:
                    if generation != self._generation:
                        continue  # a restart happened meanwhile; its readiness tracker takes over
                    self._note_probe(generation, names)
                    missing = set(self._exports) - self._served
                    failures = failures + 1 if missing else 0
                    if missing:
                        log.warning("nbd-server does not list configured export(s) {}", sorted(missing))
                await self._check_devices()
                if failures >= _PROBE_FAILURES_BEFORE_RESTART:
                    async with self._lock:
                        log.error("nbd-server failed {} probes in a row; restarting it", failures)
                        await self._restart_locked("probe failures")
                    failures = 0
            except asyncio.CancelledError:
                raise
            except DomainError as exc:
                log.error("nbd-server restart failed: {}; retrying in {:.1f}s", exc.message, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._master_exited.set()
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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _parse_export_file(path: Path) -> _Export | None:
    """Parse a file we wrote; None for anything else (foreign or damaged files are strays)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    name = device = None
    readonly = False
    created = None
    for line in lines:
        line = line.strip()
        if line.startswith("# created_at = "):
            with contextlib.suppress(ValueError):
                created = datetime.fromisoformat(line.removeprefix("# created_at = "))
        elif line.startswith("[") and line.endswith("]"):
            if name is not None:
                return None
            name = line[1:-1]
        elif line.startswith("exportname = "):
            device = line.removeprefix("exportname = ")
        elif line == "readonly = true":
            readonly = True
    if not name or not device or path.stem != name:
        return None
    try:
        validate_export_name(name)
        check_device_path_syntax(device)
    except DomainError:
        return None
    return _Export(name, device, "", readonly, created or datetime.fromtimestamp(path.stat().st_mtime, UTC))
