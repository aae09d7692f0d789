"""The `oma-server` process driven by real clients: grpcurl and `buf curl`; flags and failures at start."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oma.v1 import appliance_pb2, appliance_pb2_grpc
from oma_server.db.migrations import LATEST_VERSION
from oma_server.omactl.config import load as load_omactl_config
from oma_server.ports import free_port
from oma_server.security.ca import CertificateAuthority, alt_names
from oma_server.security.tokens import read_admin_token
from tests.clients import ca_file, process_serving
from tests.conftest import REPO, VENV_BIN
from vma_client_stubs.connection import Endpoint, sync_channel

GRPCURL = str(VENV_BIN / "grpcurl")
BUF = str(REPO / ".tools" / "node_modules" / ".bin" / "buf")
OMA_SERVER = str(VENV_BIN / "oma-server")


def wait_serving(port: int, proc: subprocess.Popen[str], data_dir: Path, timeout: float = 60.0) -> None:
    """Until the server's health answers SERVING over TLS (a bound port alone is not a started server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"oma-server exited early: {proc.stderr.read() if proc.stderr else ''}")
        if process_serving(data_dir, f"127.0.0.1:{port}", timeout=1.0):
            return
        time.sleep(0.05)  # polling the real condition
    raise AssertionError("oma-server did not become SERVING")


def server_env(data_dir: Path) -> dict[str, str]:
    """The environment of a test's oma-server: its own data dir and free ports for everything it listens on."""
    return {
        **os.environ,
        "OMA_DATA_DIR": str(data_dir),
        "OMA_NBD_LISTEN": f"127.0.0.1:{free_port()}",
        "OMA_APPLIANCE_LISTEN": f"127.0.0.1:{free_port()}",
    }


@dataclass(frozen=True)
class Running:
    port: int
    proc: subprocess.Popen[str]
    data_dir: Path

    @property
    def ca(self) -> Path:
        return ca_file(self.data_dir)

    @property
    def token(self) -> str:
        return read_admin_token(self.data_dir)


@pytest.fixture(scope="module")
def running_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    port = free_port()
    data_dir = tmp_path_factory.mktemp("oma-proc")
    proc = subprocess.Popen(
        [OMA_SERVER, "--listen", f"127.0.0.1:{port}", "--log-json"],
        env=server_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_serving(port, proc, data_dir)
    yield Running(port, proc, data_dir)
    if proc.poll() is None:  # SIGTERM: the server stops its nbd-server too (SIGKILL would orphan the daemon)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def grpcurl(
    server: Running, *args: str, data: str | None = None, token: bool = False
) -> subprocess.CompletedProcess[str]:
    """grpcurl as the README shows it: TLS verified against the OMA's CA file; with `token`, the initial admin's
    API token (health and reflection need none)."""
    cmd = [GRPCURL, "-cacert", str(server.ca)]
    if token:
        cmd += ["-H", f"authorization: Bearer {server.token}"]
    if data is not None:
        cmd += ["-d", data]
    return subprocess.run([*cmd, f"127.0.0.1:{server.port}", *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_services_without_proto_files(running_server: Running) -> None:
    out = grpcurl(running_server, "list")
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {"oma.v1.VmaGatewayService", "oma.v1.ApplianceService", "grpc.health.v1.Health"} <= services
    assert "vma.v1.VmaAgentService" in services


def test_grpcurl_describe_without_proto_files(running_server: Running) -> None:
    out = grpcurl(running_server, "describe", "oma.v1.VmaGatewayService")
    assert out.returncode == 0, out.stderr
    assert "rpc Connect ( stream .oma.v1.ConnectRequest ) returns ( stream .oma.v1.ConnectResponse )" in out.stdout
    hello = grpcurl(running_server, "describe", "vma.v1.Hello")
    assert hello.returncode == 0, hello.stderr
    assert "string appliance_id = 1;" in hello.stdout


def test_grpcurl_describe_shows_the_proto_comments(running_server: Running) -> None:
    """Reflection serves the descriptors with their source info: the comments are the SDK documentation."""
    server = running_server
    service = grpcurl(server, "describe", "oma.v1.JobService")
    assert service.returncode == 0, service.stderr
    assert "// Returns one job of any kind by its id" in service.stdout
    assert "never ends on its own" in service.stdout  # WatchJobs' comment: how the stream behaves
    request = grpcurl(server, "describe", "oma.v1.WatchJobRequest")
    assert "// Keep the stream open after the job's final state was sent" in request.stdout
    assert "bool keep_following = 3;" in request.stdout
    # an enum's valid names with what each means (grpcurl itself refuses a name the enum does not have)
    kinds = grpcurl(server, "describe", "oma.v1.FailoverJobKind")
    assert "// Test failover: the source keeps running" in kinds.stdout
    assert "FAILOVER_JOB_KIND_LIVE = 2;" in kinds.stdout
    agent = grpcurl(
        running_server, "describe", "vma.v1.VmaAgentService"
    )  # a reflection-only service keeps its comments too
    assert "// Lists the VMs the appliance can see in vCenter." in agent.stdout
    bad_name = grpcurl(
        running_server, "oma.v1.FailoverService/StartFailover", data='{"kind": "FAILOVER_JOB_KIND_BOGUS"}', token=True
    )
    assert bad_name.returncode != 0 and "FAILOVER_JOB_KIND_BOGUS" in bad_name.stderr
    bad_number = grpcurl(
        running_server, "oma.v1.FailoverService/StartFailover", data='{"vm_context_id": "x", "kind": 9}', token=True
    )
    assert "Code: InvalidArgument" in bad_number.stdout + bad_number.stderr
    assert "use one of FAILOVER_JOB_KIND_TEST, FAILOVER_JOB_KIND_LIVE" in bad_number.stdout + bad_number.stderr


def test_grpcurl_health_check(running_server: Running) -> None:
    out = grpcurl(running_server, "grpc.health.v1.Health/Check")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "SERVING"


def test_grpcurl_unimplemented_is_clean(running_server: Running) -> None:
    proc = running_server.proc
    # The agent's own service is described by the OMA's reflection but served only by an agent.
    out = grpcurl(running_server, "vma.v1.VmaAgentService/ListLocalJobs", data="{}")
    assert out.returncode != 0
    assert "Code: Unimplemented" in out.stderr
    assert proc.poll() is None  # the server is still up


def test_grpcurl_error_details(running_server: Running) -> None:
    out = grpcurl(running_server, "oma.v1.ApplianceService/EnrollAppliance", data='{"name": "bad name"}', token=True)
    assert "Code: InvalidArgument" in out.stderr
    assert '"reason":"APPLIANCE_NAME_INVALID"' in out.stderr


def test_grpcurl_without_a_token_is_unauthenticated(running_server: Running) -> None:
    out = grpcurl(running_server, "oma.v1.ApplianceService/EnrollAppliance", data='{"name": "vma-no-token"}')
    assert "Code: Unauthenticated" in out.stderr and '"reason":"TOKEN_MISSING"' in out.stderr, out.stderr
    wrong = subprocess.run(
        [GRPCURL, "-cacert", str(running_server.ca), "-H", "authorization: Bearer oma_0123456789abcdef_" + "x" * 43,
         f"127.0.0.1:{running_server.port}", "oma.v1.ApplianceService/ListAppliances"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Code: Unauthenticated" in wrong.stderr and '"reason":"TOKEN_INVALID"' in wrong.stderr, wrong.stderr


def test_buf_curl_through_reflection(running_server: Running) -> None:
    out = subprocess.run(
        [
            BUF,
            "curl",
            "--protocol",
            "grpc",
            "--cacert",
            str(running_server.ca),
            "-H",
            f"authorization: Bearer {running_server.token}",
            "-d",
            "{}",
            f"https://127.0.0.1:{running_server.port}/oma.v1.ServerInfoService/GetServerInfo",
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
        [OMA_SERVER, "serve", "--listen", f"127.0.0.1:{port}"],
        env=server_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_serving(port, proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "NOT_SERVING" in err and "stopped" in err
    assert processes_of(tmp_path) == []


def processes_of(data_dir: Path) -> list[str]:
    """Processes (say, an nbd-server) whose command line names something in this data dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended meanwhile
        if str(data_dir) in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.fixture(autouse=True)
def _end_leftovers(tmp_path: Path) -> Iterator[None]:
    """A failing test must not leave its server's processes behind for the next tests (they would hold ports)."""
    yield
    for entry in processes_of(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)


class ServerProcess:
    """An oma-server process whose log lines (text format, stderr) are read as they come."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = server_env(data_dir)
        self.proc = subprocess.Popen(
            [OMA_SERVER, "serve", "--listen", f"127.0.0.1:{self.port}", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, marker: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"oma-server ended before logging {marker!r}:\n{''.join(self.log)}")
            self.log.append(line)
            if marker in line:
                return
        raise AssertionError(f"oma-server did not log {marker!r}:\n{''.join(self.log)}")

    def finish(self, timeout: float = 60.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.log.append(line)
        return rc


# Moments of start-up, each marked by the line the server logs when it is reached.
START_UP_MOMENTS = [
    "starting (pid",  # first line of serve: nothing started yet
    "database ready",  # migrations applied; the simulator starts next
    "CloudStack simulator listening",  # the simulator runs; volumes reconcile, then nbd-server starts
    "NBD server started",  # nbdkit runs; streams and workflows start next
    "serving on",  # started
]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("moment", START_UP_MOMENTS)
def test_stop_signal_at_any_moment_of_start_up(tmp_path: Path, moment: str, sig: signal.Signals) -> None:
    """Exit 0, nothing of the server left running (its nbd-server included), the ports free again."""
    server = ServerProcess(tmp_path)
    server.wait_for_line(moment)
    server.proc.send_signal(sig)
    rc = server.finish()
    log = "".join(server.log)
    assert rc == 0, log
    assert "Traceback" not in log
    assert processes_of(tmp_path) == [], log
    nbd_port = int(server.env["OMA_NBD_LISTEN"].rsplit(":", 1)[1])
    for port in (server.port, nbd_port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it any more


@pytest.mark.slow
def test_signals_during_shutdown_change_nothing(tmp_path: Path) -> None:
    """A second and third signal while the server shuts down: still exit 0, still nothing left."""
    server = ServerProcess(tmp_path)
    server.wait_for_line("serving on")
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for_line("shutting down")
    server.proc.send_signal(signal.SIGINT)
    server.proc.send_signal(signal.SIGTERM)
    rc = server.finish()
    assert rc == 0, "".join(server.log)
    assert "stopped" in "".join(server.log)
    assert processes_of(tmp_path) == []


def test_busy_port_fails_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = subprocess.run(
            [OMA_SERVER, "serve", "--listen", f"127.0.0.1:{port}"],
            env=server_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"cannot listen on 127.0.0.1:{port}" in errors[0], out.stderr
    assert "NBD server started" not in out.stderr and "simulator listening" not in out.stderr
    assert processes_of(tmp_path) == []


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """oma-server with these arguments, on free ports unless `env` or the arguments say otherwise."""
    free = {
        "OMA_LISTEN": f"127.0.0.1:{free_port()}",
        "OMA_NBD_LISTEN": f"127.0.0.1:{free_port()}",
        "OMA_APPLIANCE_LISTEN": f"127.0.0.1:{free_port()}",
    }
    return subprocess.run(
        [OMA_SERVER, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **free, **(env or {})}
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
    """`migrate` opens the database and nothing else: it neither needs nor touches the NBD port or CloudStack."""
    with socket.socket() as nbd_port_taken:
        nbd_port_taken.bind(("127.0.0.1", 0))
        nbd_port_taken.listen()
        nbd_listen = f"127.0.0.1:{nbd_port_taken.getsockname()[1]}"
        out = run_cli(
            "migrate",
            "--data-dir",
            str(tmp_path),
            "--nbd-listen",
            nbd_listen,
            "--cloudstack",
            f"http://127.0.0.1:{free_port()}/client/api",  # no keys, nothing listening: fatal to a server start
        )
    assert out.returncode == 0, out.stderr
    assert f"schema version {LATEST_VERSION}" in out.stdout
    assert (tmp_path / "oma.db").exists()
    assert "nbd" not in out.stderr.lower() and "cloudstack" not in out.stderr.lower(), out.stderr
    assert processes_of(tmp_path) == []


# ---- transport security: TLS by default, plaintext only with --insecure -----------------------------------------


def _health(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def test_plaintext_client_is_refused_by_the_tls_port(running_server: Running) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running_server.port}") as channel:
        assert _health(channel) == grpc.StatusCode.UNAVAILABLE
    # grpcurl waits out its connect timeout on a TLS port (10 s by default); a plaintext port would answer at once
    out = subprocess.run(
        [GRPCURL, "-plaintext", "-connect-timeout", "3", f"127.0.0.1:{running_server.port}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and "oma.v1" not in out.stdout, out


def test_a_client_trusting_another_ca_is_refused(running_server: Running, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "other-ca")
    endpoint = Endpoint(f"127.0.0.1:{running_server.port}", other.pem)
    with sync_channel(endpoint) as channel:
        assert _health(channel) == grpc.StatusCode.UNAVAILABLE
    out = subprocess.run(
        [GRPCURL, "-cacert", str(other.cert_path), f"127.0.0.1:{running_server.port}", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and "certificate" in out.stderr.lower(), out
    with sync_channel(Endpoint(f"127.0.0.1:{running_server.port}", running_server.ca.read_bytes())) as channel:
        assert _health(channel) == grpc.StatusCode.OK  # the same call with the OMA's own CA


def test_keys_are_0600_and_the_tls_directory_0700(running_server: Running) -> None:
    tls = running_server.data_dir / "tls"
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    keys = sorted(p.name for p in tls.glob("*.key"))
    assert keys == ["appliance-server.key", "ca.key", "nbd-server.key", "server.key"]  # a port each
    for name in keys:
        assert stat.S_IMODE((tls / name).stat().st_mode) == 0o600, name
    nbd = running_server.data_dir / "nbd"
    for private in (nbd / "tls" / "server-key.pem", nbd / "probe" / "probe.key"):  # what nbdkit and its probe use
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    for directory in (nbd / "tls", nbd / "probe"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for name in ("ca.crt", "server.crt"):
        assert stat.S_IMODE((tls / name).stat().st_mode) == 0o644, name
    assert not list(tls.glob(".*.tmp"))


def test_the_server_certificate_carries_the_advertised_names(tmp_path: Path) -> None:
    names = ("--advertise-address", "oma.example.test:7443", "--advertise-address", "10.9.8.7")
    server = ServerProcess(tmp_path, *names)
    try:
        wait_serving(server.port, server.proc, tmp_path)
        leaf = x509.load_pem_x509_certificates((tmp_path / "tls" / "server.crt").read_bytes())[0]
        assert set(alt_names(leaf)) == {"127.0.0.1", "localhost", "oma.example.test", "10.9.8.7"}
        address = f"127.0.0.1:{server.port}"
        base = [GRPCURL, "-cacert", str(ca_file(tmp_path))]
        named = subprocess.run(
            [*base, "-servername", "oma.example.test", address, "list"], capture_output=True, text=True
        )
        assert named.returncode == 0 and "oma.v1.ReplicationService" in named.stdout, named.stderr
        unnamed = subprocess.run([*base, "-servername", "other.example.test", address, "list"], capture_output=True)
        assert unnamed.returncode != 0
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.finish() == 0
    assert "made the server certificate" in "".join(server.log)
    # Started again with the same names, it keeps its certificate.
    again = ServerProcess(tmp_path, *names)
    again.wait_for_line("serving on")
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish() == 0
    assert "made the server certificate" not in "".join(again.log)
    assert x509.load_pem_x509_certificates((tmp_path / "tls" / "server.crt").read_bytes())[0] == leaf


def test_insecure_serves_plaintext_and_warns(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "--insecure")
    server.wait_for_line("PLAINTEXT")
    server.wait_for_line("serving on")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert _health(channel) == grpc.StatusCode.OK
        warning = next(line for line in server.log if "PLAINTEXT" in line)
        assert "WARNING" in warning and "--insecure" in warning
        assert not (tmp_path / "tls").exists()  # no CA is made for a plaintext server
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.finish() == 0


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def test_an_operators_certificate_is_served(tmp_path: Path) -> None:
    """--tls-cert/--tls-key from the operator's own CA (made with openssl, not our code): clients verify the OMA
    against that CA, and the OMA makes no CA of its own."""
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl(pki, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=operator CA")  # fmt: skip
    _openssl(pki, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "oma.key",
             "-out", "oma.csr", "-subj", "/CN=oma.operator.test")  # fmt: skip
    (pki / "san.cnf").write_text("subjectAltName=DNS:oma.operator.test,IP:127.0.0.1\n")
    _openssl(pki, "x509", "-req", "-in", "oma.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "oma.pem", "-days", "1", "-extfile", "san.cnf")  # fmt: skip
    data_dir = tmp_path / "oma"
    server = ServerProcess(data_dir, "--tls-cert", str(pki / "oma.pem"), "--tls-key", str(pki / "oma.key"))
    try:
        server.wait_for_line("serving on")
        with sync_channel(Endpoint(f"127.0.0.1:{server.port}", (pki / "ca.pem").read_bytes())) as channel:
            assert _health(channel) == grpc.StatusCode.OK
        assert not (data_dir / "tls" / "server.crt").exists()
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.finish() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "/etc/hostname"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "is not a file"),
        (["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"], "holds no PEM certificate"),
    ],
)
def test_bad_tls_flags_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    out = run_cli(*args, "--data-dir", str(tmp_path))
    assert out.returncode == 2, out
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], out.stderr


def test_create_token_makes_a_hashed_token_that_the_server_accepts(running_server: Running, tmp_path: Path) -> None:
    """`oma-server create-token` writes to the database the server uses (here its SQLite file) and prints the
    secret once on stdout; the running server accepts it at once, with its role."""
    env = {**server_env(running_server.data_dir)}
    out = subprocess.run(
        [OMA_SERVER, "create-token", "--name", "ci-viewer", "--role", "viewer", "--ttl", "30d"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    secret = out.stdout.strip()
    assert secret.startswith("oma_") and "role viewer" in out.stderr and secret not in out.stderr
    assert secret.split("_", 2)[2].encode() not in (running_server.data_dir / "oma.db").read_bytes()
    endpoint = Endpoint(f"127.0.0.1:{running_server.port}", running_server.ca.read_bytes(), token=secret)
    with sync_channel(endpoint) as channel:
        listed = appliance_pb2_grpc.ApplianceServiceStub(channel).ListAppliances(
            appliance_pb2.ListAppliancesRequest(), timeout=10
        )
        assert listed is not None
        with pytest.raises(grpc.RpcError) as denied:
            appliance_pb2_grpc.ApplianceServiceStub(channel).EnrollAppliance(
                appliance_pb2.EnrollApplianceRequest(name="vma-by-viewer"), timeout=10
            )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    bad = subprocess.run(
        [OMA_SERVER, "create-token", "--name", "x", "--role", "viewer", "--ttl", "soon"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert bad.returncode == 2 and "invalid lifetime 'soon'" in bad.stderr, bad.stderr


def test_create_token_writes_an_omactl_config_that_omactl_runs_with_alone(
    running_server: Running, tmp_path: Path
) -> None:
    """`oma-server create-token --omactl-config` on the OMA host: the file (0600) holds the address omactl dials,
    the OMA's CA and the new token; omactl given only that file acts with the token's role."""
    config = tmp_path / "ops" / "omactl.toml"
    argv = [OMA_SERVER, "create-token", "--name", "ops-viewer", "--role", "viewer",
            "--listen", f"127.0.0.1:{running_server.port}", "--omactl-config", str(config)]  # fmt: skip
    env = server_env(running_server.data_dir)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and f"wrote {config} (0600)" in out.stderr, out.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    secret = out.stdout.strip()
    loaded = load_omactl_config(config)
    assert (loaded.server, loaded.ca, loaded.token) == (f"127.0.0.1:{running_server.port}", running_server.ca, secret)
    omactl_env = {k: v for k, v in os.environ.items() if not k.startswith("OMA_")}
    omactl_env |= {"OMA_CONFIG": str(config), "XDG_CONFIG_HOME": str(tmp_path / "none")}
    omactl = [str(VENV_BIN / "omactl")]
    read = subprocess.run([*omactl, "appliances", "list"], capture_output=True, text=True, timeout=60, env=omactl_env)
    assert read.returncode == 0, read.stderr
    denied = subprocess.run([*omactl, "tokens", "list"], capture_output=True, text=True, timeout=60, env=omactl_env)
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr, denied.stderr
    again = subprocess.run([*argv[:3], "ops-2", *argv[4:]], capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 2 and "exists" in again.stderr and not again.stdout, again.stderr


def test_the_first_start_makes_an_admin_token_and_logs_only_where_it_is(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path)
    first.wait_for_line("initial admin API token")
    first.wait_for_line("serving on")
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() == 0
    token_file = tmp_path / "admin.token"
    secret = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    log = "".join(first.log)
    assert str(token_file) in log and secret not in log and secret.split("_", 2)[2] not in log
    again = ServerProcess(tmp_path)  # tokens exist now: none is made, the file is left as it is
    again.wait_for_line("serving on")
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish() == 0
    assert "initial admin API token" not in "".join(again.log)
    assert token_file.read_text().strip() == secret
