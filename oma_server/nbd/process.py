"""The one nbdkit process of an export manager: its command line, launch, take-over, exit watch and end.

nbdkit runs as a daemon (`--foreground` would tie it to its parent: an OMA crash would cut every transfer). This
process makes itself a child subreaper, so the daemon is re-parented to it and reaped by it (no zombie), and
watches it with a pidfd. A leftover nbdkit of the same config directory started with exactly this command line is
taken over (its connections keep running); one started differently is replaced. What the process serves — the
export links, probes, supervision — is the manager's (`manager.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from loguru import logger

from oma_server.nbd import procs
from oma_server.nbd.errors import NbdPortInUse, NbdServerUnavailable

log = logger.bind(component="nbd")

SERVER_NAME = "nbdkit"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0
_THREADS = 16  # nbdkit's default; several connections of several copies each keep many requests in flight


class NbdkitProcess:
    def __init__(
        self,
        binary: str,
        host: str,
        port: int,
        config_dir: Path,
        exports_dir: Path,
        tls_flags: list[str] | None = None,
        *,
        hide_export_list: bool = False,
    ) -> None:
        """`hide_export_list`: NBD_OPT_LIST is answered with an error (nbdkit's exportname filter,
        `exportname-list=error`), so a client reaches only the exports whose names it was given."""
        self.binary = binary
        self.tls_flags = list(tls_flags or [])
        self.hide_export_list = hide_export_list
        self.host = host
        self.port = port
        self.exports_dir = exports_dir
        self.pid_path = config_dir / "nbdkit.pid"
        self.log_path = config_dir / "nbdkit.log"
        self.pid: int | None = None
        self.adopted = False  # the running server was taken over from an earlier OMA process
        self.launches = 0
        self.exited = asyncio.Event()  # set when the watched process has ended
        self._pidfd: int | None = None

    def argv(self) -> list[str]:
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
            *self.tls_flags,
            *(["--filter=exportname"] if self.hide_export_list else []),
            "file",
            f"dir={self.exports_dir}",
            *(["exportname-list=error"] if self.hide_export_list else []),
        ]

    @property
    def running(self) -> bool:
        return self.pid is not None and procs.is_running(self.pid)

    @property
    def watched(self) -> bool:
        """Its exit wakes the supervisor (a pidfd); otherwise the supervisor polls."""
        return self._pidfd is not None

    def fds_open_on(self, resolved_path: str) -> list[int]:
        """nbdkit's file descriptors open on a device: one per connected client of its export."""
        if self.pid is None or not resolved_path:
            return []
        return procs.fds_open_on(self.pid, resolved_path)

    async def take_over_leftover(self) -> bool:
        """Adopt an nbdkit left by an earlier OMA of this config dir; replace one that differs. True if adopted."""
        wanted = tuple(self.argv())
        for info in await asyncio.to_thread(procs.server_processes, SERVER_NAME, str(self.exports_dir)):
            if info.cmdline == wanted and await asyncio.to_thread(procs.listens_on, info.pid, self.port):
                self.pid, self.adopted = info.pid, True
                self._watch(info.pid)
                log.warning(
                    "Took over nbdkit pid {} left by an earlier OMA process on this data dir (its connections "
                    "keep running)",
                    info.pid,
                )
                return True
            log.warning("Replacing nbdkit pid {} of this data dir started differently: {}", info.pid, info.cmdline)
            procs.kill(info.pid, signal.SIGKILL)
            await wait_exit(info.pid, STOP_TIMEOUT_S)
        return False

    async def port_holder_error(self) -> NbdPortInUse:
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

    async def launch(self, reason: str) -> None:
        """Start nbdkit and wait until it listens. None of ours may be running."""
        t0 = time.perf_counter()
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        if await asyncio.to_thread(procs.listening_pids, self.port):
            raise await self.port_holder_error()
        procs.become_subreaper()  # the daemon becomes our child, so we reap it
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        stderr = await asyncio.to_thread(open, self.log_path, "ab")
        with stderr:
            try:
                launcher = await asyncio.create_subprocess_exec(
                    *self.argv(),
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
            code = await asyncio.wait_for(launcher.wait(), START_TIMEOUT_S)  # it returns once the daemon runs
        except TimeoutError:
            launcher.kill()
            await launcher.wait()
            code = -1
        if code != 0:  # bad arguments, bind errors: nbdkit checks them before it daemonises
            text = await asyncio.to_thread(_log_tail, self.log_path, offset)
            holders = await asyncio.to_thread(procs.listening_pids, self.port)
            if "Address already in use" in text or holders:
                raise await self.port_holder_error()
            raise NbdServerUnavailable(
                f"nbdkit refused to start (exit {code}) on {self.host}:{self.port}: {text or 'no message'}. Check "
                f"that the address is local and the port free ({self.log_path}).",
                listen=f"{self.host}:{self.port}",
                exit_code=code,
            )
        pid = await self._wait_listening()
        self.pid, self.adopted = pid, False
        self._watch(pid)
        self.launches += 1
        log.debug("nbdkit launched for {} in {:.1f} ms (pid {})", reason, (time.perf_counter() - t0) * 1000, pid)

    async def _wait_listening(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        pid: int | None = None
        while pid is None or not await asyncio.to_thread(procs.listens_on, pid, self.port):
            if pid is None:
                pid = await asyncio.to_thread(_read_pid, self.pid_path)
            if (pid is not None and not procs.is_running(pid)) or time.monotonic() > deadline:
                if pid is not None:
                    self.pid = pid
                    await self.terminate()
                raise NbdServerUnavailable(
                    f"nbdkit daemonised but did not listen on {self.host}:{self.port} (pid {pid}); see "
                    f"{self.log_path}.",
                    listen=f"{self.host}:{self.port}",
                )
            await asyncio.sleep(0.002)
        return pid

    async def terminate(self) -> None:
        """End it (SIGTERM, then SIGKILL) and reap it."""
        self._unwatch()
        pid, self.pid = self.pid, None
        if pid is None:
            return
        if procs.is_running(pid):
            procs.kill(pid, signal.SIGTERM)
            await wait_exit(pid, STOP_TIMEOUT_S)
        if procs.is_running(pid):
            procs.kill(pid, signal.SIGKILL)
            await wait_exit(pid, STOP_TIMEOUT_S)
        procs.reap(pid)

    def forget(self) -> None:
        """Stop watching and forget it without ending it: what a SIGKILLed OMA leaves (tests)."""
        self._unwatch()
        self.pid = None

    def _watch(self, pid: int) -> None:
        self.exited.clear()
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
        if pid == self.pid:
            self._unwatch()
            self.exited.set()


async def wait_exit(pid: int, timeout: float) -> None:
    """Until the process has exited (a pidfd turns readable), at most `timeout` seconds."""
    try:
        fd = os.pidfd_open(pid)
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
