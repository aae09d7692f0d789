"""The `oma-server` process driven by real clients: grpcurl and `buf curl`; flags and failures at start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oma_server.db.migrations import LATEST_VERSION
from tests.conftest import REPO, VENV_BIN
from tests.pg import free_port

GRPCURL = str(VENV_BIN / "grpcurl")
BUF = str(REPO / ".tools" / "node_modules" / ".bin" / "buf")
OMA_SERVER = str(VENV_BIN / "oma-server")


def wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"oma-server exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("oma-server did not start listening")


@pytest.fixture(scope="module")
def running_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    data_dir = tmp_path_factory.mktemp("oma-proc")
    env = {**os.environ, "OMA_DATA_DIR": str(data_dir), "OMA_NBD_LISTEN": f"127.0.0.1:{free_port()}"}
    proc = subprocess.Popen(
        [OMA_SERVER, "--listen", f"127.0.0.1:{port}", "--log-json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(port, proc)
    yield port, proc
    if proc.poll() is None:  # SIGTERM: the server stops its nbd-server too (SIGKILL would orphan the daemon)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def grpcurl(port: int, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [GRPCURL, "-plaintext"]
    if data is not None:
        cmd += ["-d", data]
    return subprocess.run([*cmd, f"127.0.0.1:{port}", *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_services_without_proto_files(running_server: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = running_server
    out = grpcurl(port, "list")
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {"oma.v1.VmaGatewayService", "oma.v1.ApplianceService", "grpc.health.v1.Health"} <= services
    assert "vma.v1.VmaAgentService" in services


def test_grpcurl_describe_without_proto_files(running_server: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = running_server
    out = grpcurl(port, "describe", "oma.v1.VmaGatewayService")
    assert out.returncode == 0, out.stderr
    assert "rpc Connect ( stream .oma.v1.ConnectRequest ) returns ( stream .oma.v1.ConnectResponse )" in out.stdout
    hello = grpcurl(port, "describe", "vma.v1.Hello")
    assert hello.returncode == 0, hello.stderr
    assert "string appliance_id = 1;" in hello.stdout


def test_grpcurl_health_check(running_server: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = running_server
    out = grpcurl(port, "grpc.health.v1.Health/Check")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "SERVING"


def test_grpcurl_unimplemented_is_clean(running_server: tuple[int, subprocess.Popen[str]]) -> None:
    port, proc = running_server
    # The agent's own service is described by the OMA's reflection but served only by an agent.
    out = grpcurl(port, "vma.v1.VmaAgentService/ListLocalJobs", data="{}")
    assert out.returncode != 0
    assert "Code: Unimplemented" in out.stderr
    assert proc.poll() is None  # the server is still up


def test_grpcurl_error_details(running_server: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = running_server
    out = grpcurl(port, "oma.v1.ApplianceService/EnrollAppliance", data='{"name": "bad name"}')
    assert "Code: InvalidArgument" in out.stderr
    assert '"reason":"APPLIANCE_NAME_INVALID"' in out.stderr


def test_buf_curl_through_reflection(running_server: tuple[int, subprocess.Popen[str]]) -> None:
    port, _ = running_server
    out = subprocess.run(
        [
            BUF,
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-d",
            "{}",
            f"http://127.0.0.1:{port}/oma.v1.ServerInfoService/GetServerInfo",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == (REPO / "VERSION.txt").read_text().strip()


def test_sigterm_shuts_down_gracefully(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [OMA_SERVER, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(port, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "NOT_SERVING" in err and "stopped" in err


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OMA_SERVER, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_version_flag() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"oma-server {(REPO / 'VERSION.txt').read_text().strip()}"


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--listen", "no-port-here"],
        ["serve", "--progress-flush-interval", "abc"],
        ["--database", "mysql://x/y"],
    ],
)
def test_bad_flags_are_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    out = run_cli(*args, "--data-dir", str(tmp_path))
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_bad_env_value_is_one_line(tmp_path: Path) -> None:
    out = run_cli("--data-dir", str(tmp_path), env={"OMA_LISTEN": "nonsense"})
    assert out.returncode == 2
    assert "--listen 'nonsense' is not HOST:PORT" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unreachable_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = run_cli("--data-dir", str(tmp_path), "--database", f"postgresql://oma:pw@127.0.0.1:{free_port()}/oma")
    assert out.returncode == 2
    lines = [line for line in out.stderr.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "cannot reach database" in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert ":pw@" not in out.stderr


def test_migrate_subcommand(tmp_path: Path) -> None:
    out = run_cli("migrate", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert f"schema version {LATEST_VERSION}" in out.stdout
    assert (tmp_path / "oma.db").exists()
