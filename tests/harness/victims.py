"""The processes a workflow harness kills besides `oma-server` (tests/harness/oma_process.py): the CloudStack
simulator as its own process and the reference VMA agent. Each starts on free ports, dies by SIGKILL and starts again
on the same state, as a crashed host or a restarted appliance would.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from oma_server.ports import free_port
from tests.conftest import VENV_BIN


def _spawn(args: list[str], out: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(out, "wb") as stdout, open(log, "ab") as stderr:
        stderr.write(f"---- {shlex.join(args)}\n".encode())
        stderr.flush()
        return subprocess.Popen(args, stdout=stdout, stderr=stderr, env=env)


def _sigkill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    if proc is not None:
        proc.wait()


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _sigkill(proc)


class CloudStackProcess:
    """`oma-cloudstack-sim` on a port of its own; its first two stdout lines name the endpoint, keys, zone, OMA VM
    and device root. A restart keeps the port and the state directory (the world and the keys persist there)."""

    def __init__(self, state_dir: Path, log: Path, seed: Path | None = None) -> None:
        """`seed`: a JSON file of the simulator's initial world (cloudstack/sim_seed.py)."""
        self.state_dir = state_dir
        self.log = log
        self.seed = seed
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.announced: dict[str, str] = {}
        self.starts = 0

    @property
    def url(self) -> str:
        return self.announced["CLOUDSTACK_ENDPOINT"]

    @property
    def keys(self) -> tuple[str, str]:
        """(API key, secret key)."""
        return self.announced["CLOUDSTACK_KEY"], self.announced["CLOUDSTACK_SECRET"]

    def oma_environment(self, poll_interval_s: float = 0.05) -> dict[str, str]:
        """What `oma-server --cloudstack URL` needs in its environment to work against this simulator."""
        return {
            "OMA_CLOUDSTACK_API_KEY": self.announced["CLOUDSTACK_KEY"],
            "OMA_CLOUDSTACK_SECRET_KEY": self.announced["CLOUDSTACK_SECRET"],
            "OMA_CLOUDSTACK_ZONE": self.announced["OMA_CLOUDSTACK_ZONE"],
            "OMA_CLOUDSTACK_OMA_VM_ID": self.announced["OMA_CLOUDSTACK_OMA_VM_ID"],
            "OMA_CLOUDSTACK_POLL_INTERVAL": str(poll_interval_s),
        }

    @property
    def device_root(self) -> Path:
        """The OMA VM's /dev/disk/by-id and /sys, as the simulator keeps them for `oma-server --device-root` and
        `--sys-root`."""
        return Path(self.announced["DEVICE_ROOT"])

    @property
    def sys_root(self) -> Path:
        return Path(self.announced["SYS_ROOT"])

    @property
    def oma_vm_id(self) -> str:
        return self.announced["OMA_CLOUDSTACK_OMA_VM_ID"]

    def start(self, timeout: float = 30.0) -> None:
        out = self.log.with_suffix(".out")
        args = [
            str(VENV_BIN / "oma-cloudstack-sim"),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--state-dir",
            str(self.state_dir),
            *(["--seed", str(self.seed)] if self.seed is not None else []),
        ]
        self.proc = _spawn(args, out, self.log)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"oma-cloudstack-sim exited with {self.proc.returncode}; see {self.log}")
            lines = out.read_text().splitlines()
            if len(lines) >= 2:  # printed once it listens
                self.announced = dict(token.split("=", 1) for line in lines[:2] for token in line.split())
                return
            time.sleep(0.02)
        raise AssertionError(f"oma-cloudstack-sim did not announce itself within {timeout:.0f}s; see {self.log}")

    def kill(self) -> None:
        _sigkill(self.proc)

    def stop(self) -> None:
        _terminate(self.proc)


class AgentProcess:
    """`vma-agent run` against an OMA address; its state dir carries job records, sequences and resume points
    across a SIGKILL."""

    def __init__(
        self,
        oma_address: str,
        appliance_id: str,
        credential_file: Path,
        vcenter_dir: Path,
        state_dir: Path,
        log: Path,
        *flags: str,
    ) -> None:
        self.args = [
            str(VENV_BIN / "vma-agent"),
            "run",
            "--oma",
            oma_address,
            "--appliance-id",
            appliance_id,
            "--credential-file",
            str(credential_file),
            "--vcenter-dir",
            str(vcenter_dir),
            "--state-dir",
            str(state_dir),
            *flags,
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.proc = _spawn(self.args, self.log.with_suffix(".out"), self.log, env={**os.environ, "NO_COLOR": "1"})
        self.starts += 1

    def kill(self) -> None:
        _sigkill(self.proc)

    def stop(self) -> None:
        _terminate(self.proc)
