"""The NBD server across the life of real `oma-server` processes: SIGKILL and restart, another data dir on the port,
a killed nbdkit reaped and replaced, nothing left after a clean stop."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oma_server.nbd import procs
from oma_server.ports import free_port
from tests.clients import nbd_client_certificates, process_serving
from tests.conftest import VENV_BIN
from tests.nbd.conftest import requires_nbd

pytestmark = [pytest.mark.nbd, requires_nbd, pytest.mark.slow]

OMA_SERVER = str(VENV_BIN / "oma-server")


class OmaProcess:
    """One `oma-server` process on its own gRPC port, with the given data dir and NBD port."""

    def __init__(self, data_dir: Path, nbd_port: int) -> None:
        self.data_dir = data_dir
        self.nbd_port = nbd_port
        self.port = free_port()
        # Its log goes to a file (a pipe nobody reads could fill and stall it); a failed stop shows its tail.
        self.log_path = data_dir.with_name(f"{data_dir.name}-oma-server.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [OMA_SERVER, "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(data_dir),
                 "--nbd-listen", f"127.0.0.1:{nbd_port}", "--appliance-listen", f"127.0.0.1:{free_port()}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Until the server's health check answers SERVING (set once the App, its NBD server included, has started)
        and the process catches SIGTERM (a SIGTERM from then on is a clean stop)."""
        deadline = time.monotonic() + timeout
        while not (self._serving() and self._catches_sigterm()):
            if self.proc.poll() is not None:
                raise AssertionError(f"oma-server exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError("oma-server did not start serving") from None
            time.sleep(0.02)  # polling the real conditions

    def _serving(self) -> bool:
        return process_serving(self.data_dir, f"127.0.0.1:{self.port}")

    def _catches_sigterm(self) -> bool:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
        return False

    def nbdkits(self) -> list[int]:
        return [p.pid for p in procs.server_processes("nbdkit", str(self.data_dir / "nbd" / "exports"))]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def oma_processes() -> Iterator[list[OmaProcess]]:
    started: list[OmaProcess] = []
    yield started
    for oma in started:
        oma.stop()
        for pid in oma.nbdkits():  # a SIGKILLed OMA's nbdkit: no test may leave one behind
            procs.kill(pid, signal.SIGKILL)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until `pid` has exited (its pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], timeout)[0], f"pid {pid} still runs after {timeout} s"
    finally:
        os.close(fd)


def _check_nbd_answers_with_a_hidden_list(port: int, data_dir: Path) -> None:
    """nbdinfo's answer over TLS with a certificate of the OMA's CA: the handshake completes and the list request
    is refused (plaintext is refused at once)."""
    plain = subprocess.run(["nbdinfo", "--list", f"nbd://127.0.0.1:{port}"], capture_output=True, text=True)
    assert plain.returncode != 0, "the NBD port answers a client without TLS"
    certs = nbd_client_certificates(data_dir, data_dir.parent / "nbd-client")
    uri = f"nbds://127.0.0.1:{port}?tls-certificates={certs}"
    out = subprocess.run(["nbdinfo", "--list", "--json", uri], capture_output=True, text=True)
    assert out.returncode != 0 and "replied with error to list request" in out.stderr, out.stderr + out.stdout


def test_sigkilled_oma_restarts_and_takes_over_its_nbdkit(oma_processes: list[OmaProcess], tmp_path: Path) -> None:
    data_dir, nbd_port = tmp_path / "oma", free_port()
    first = OmaProcess(data_dir, nbd_port)
    oma_processes.append(first)
    first.wait_serving()
    [nbdkit] = first.nbdkits()
    assert procs.listens_on(nbdkit, nbd_port)

    first.proc.kill()  # SIGKILL: no shutdown code runs
    first.proc.wait()
    assert procs.is_running(nbdkit), "nbdkit outlives a killed OMA (its transfers with it)"

    second = OmaProcess(data_dir, nbd_port)
    oma_processes.append(second)
    second.wait_serving()
    assert second.nbdkits() == [nbdkit], "the restarted OMA took the running nbdkit over instead of a second one"
    _check_nbd_answers_with_a_hidden_list(nbd_port, data_dir)

    # A clean stop leaves nothing behind: no nbdkit, the port free for whoever comes next.
    assert second.stop() == 0, second.log_tail()
    _wait_gone(nbdkit)
    assert second.nbdkits() == []
    third = OmaProcess(data_dir, nbd_port)
    oma_processes.append(third)
    third.wait_serving()
    assert len(third.nbdkits()) == 1 and third.nbdkits() != [nbdkit]


def test_nbd_port_held_by_another_data_dirs_oma_is_a_clear_error(
    oma_processes: list[OmaProcess], tmp_path: Path
) -> None:
    nbd_port = free_port()
    owner = OmaProcess(tmp_path / "a", nbd_port)
    oma_processes.append(owner)
    owner.wait_serving()
    intruder = OmaProcess(tmp_path / "b", nbd_port)
    oma_processes.append(intruder)
    assert intruder.proc.wait(timeout=60) == 2
    err = intruder.log_path.read_text()
    [line] = [x for x in err.splitlines() if x.startswith("oma-server: error:")]
    assert f"Port {nbd_port}" in line and "already in use" in line and "--nbd-listen" in line
    [owners_nbdkit] = owner.nbdkits()
    assert f"pid {owners_nbdkit}" in line
    assert intruder.nbdkits() == [] and procs.is_running(owners_nbdkit), "the owner's nbdkit is left alone"


def test_a_killed_nbdkit_is_reaped_and_replaced(oma_processes: list[OmaProcess], tmp_path: Path) -> None:
    oma = OmaProcess(tmp_path / "oma", free_port())
    oma_processes.append(oma)
    oma.wait_serving()
    [old] = oma.nbdkits()
    os.kill(old, signal.SIGKILL)
    _wait_gone(old)
    deadline = time.monotonic() + 30
    while not ((current := oma.nbdkits()) and procs.listens_on(current[0], oma.nbd_port)):
        assert time.monotonic() < deadline, "nbdkit was not restarted"
        time.sleep(0.01)  # polling the real condition: a new nbdkit listening
    assert len(current) == 1 and current != [old]
    # The OMA reaped its dead child: no zombie of the old nbdkit stays in the process table.
    assert procs.read_proc(old) is None
    # A stop while the replacement starts (the supervisor cancelled in its launch) still ends the replacement.
    assert oma.stop() == 0, oma.log_tail()
    assert oma.nbdkits() == [], f"a clean stop left nbdkit running: {oma.log_tail()}"
