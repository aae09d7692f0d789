"""A real `oma-server` process for fault harnesses: started on free ports, killed with SIGKILL, started again.

A kill takes the whole OMA down as a host crash would: the server process and every process it started (the NBD
server daemonises out of its process group, so the processes are found by the data directory in their command
line). What the restarted server finds is exactly what a crash leaves on disk and in the database.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import grpc

from oma_server.ports import free_port
from tests.clients import process_endpoint, process_serving
from tests.conftest import VENV_BIN
from vma_client_stubs.connection import Endpoint, Options, aio_channel

# The server command; OMA_HARNESS_SERVER replaces it (e.g. to run the harness against another checkout).
OMA_SERVER = shlex.split(os.environ.get("OMA_HARNESS_SERVER", "")) or [str(VENV_BIN / "oma-server")]


def processes_using(path: Path) -> list[int]:
    """Pids whose command line mentions `path` (this process excluded)."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


class OmaProcess:
    def __init__(
        self, data_dir: Path, database_url: str = "", *extra: str, env: Mapping[str, str] | None = None
    ) -> None:
        """`extra` flags go to `oma-server serve`; `env` is added to this process's environment (e.g. the
        OMA_CLOUDSTACK_* keys of an external CloudStack)."""
        self.data_dir = data_dir
        self.database_url = database_url
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.nbd_port = free_port()
        self.appliance_port = free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        args = [
            *OMA_SERVER,
            "serve",
            "--listen",
            self.address,
            "--data-dir",
            str(self.data_dir),
            "--nbd-listen",
            f"127.0.0.1:{self.nbd_port}",
            "--appliance-listen",
            f"127.0.0.1:{self.appliance_port}",
            "--allow-credential-hello",  # the harnesses' VMAs prove themselves by their enrollment credential
            "--log-json",
            *self.extra,
        ]
        if self.database_url:
            args += ["--database", self.database_url]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=self.env)
        self.starts += 1
        self._wait_serving(timeout)

    def _wait_serving(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"oma-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if process_serving(self.data_dir, self.address):
                return
            time.sleep(0.05)
        raise AssertionError(f"oma-server did not become SERVING within {timeout:.0f}s:\n{self.log_tail()}")

    def endpoint(self) -> Endpoint:
        """The server as a client dials it: TLS verified against the CA of its data dir."""
        return process_endpoint(self.data_dir, self.address)

    def channel(self, options: Options | None = None) -> grpc.aio.Channel:
        return aio_channel(self.endpoint(), options)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the server's log, for a failure message that explains itself."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {self.log})"

    def kill(self) -> None:
        """SIGKILL the server and everything it started: a host crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in processes_using(self.data_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while processes_using(self.data_dir) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart_after_kill(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """SIGTERM (a graceful stop); a server that does not stop in time is killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
