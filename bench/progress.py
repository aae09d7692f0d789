"""`python -m bench.progress`: N simulated VMAs push progress over their streams into one OMA process.

Phases, one after the other on this machine (127.0.0.1 only):

1. **Setup**: the database (SQLite in a temp dir, or `--database postgresql://…`) is seeded in this process through
   the real services (`App`: enroll N appliances, one VM with 2 disks and one dispatched replication job each — the
   job is `waiting_for_vma` with its start command in the outbox, as `tests/factories.seed_job` does). There is no
   public RPC that creates a job without provisioning real volumes, so the seeding runs against the same database
   before the server starts; then the App is stopped.
2. **OMA run**: one `oma-server` process on that data dir. Each VMA opens one bidirectional stream (its own channel,
   so its own TCP connection), says Hello, sends a `started` event and waits for its ack (warm-up, the job becomes
   `replicating`), then on a common start signal pushes ProgressReports at R/s for T s (absolute bytes, growing
   sequence, 2 disks, `sent_at` set; phases spread evenly over 1/R) plus heartbeats. W `WatchJobs` streams receive
   every change. Latencies use the host clock: watch = receipt - send of the report whose sequence the update
   carries; commit = arrival of the JobAck covering the sequence - send (the ack follows the batched DB write).
3. **Echo ceiling**: a raw grpc.aio echo server process, same N streams, same messages, same R and T.
4. **Old design floor**: one aiohttp app serving `/progress/<vma>` (latest report as JSON, updated R/s in-process),
   polled every 5 s with at most 10 polls in flight.

The VMAs run in this process or in `--workers` processes (the watchers and the poller always run here).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from bench._common import machine_info as common_machine_info
from bench._common import write_json
from bench._progress_servers import DISK_BYTES, ECHO_METHOD
from oma.common.v1 import jobs_pb2
from oma.v1 import gateway_pb2, gateway_pb2_grpc, job_pb2, job_pb2_grpc
from oma_server.ports import free_port
from vma.v1 import stream_pb2
from vma_client_stubs.connection import Endpoint, aio_channel

CHUNK = 64 << 20  # bytes copied per disk between two reports
WARM_S = 2.0  # the first seconds of the send window are not counted in rates
ACK_GRACE_S = 3.0  # after the last report: time for the last batched write and its acks
POLL_INTERVAL_S = 5.0
POLL_IN_FLIGHT = 10
CONNECT_CONCURRENCY = 64


# ---- small helpers ---------------------------------------------------------------------------------------------------
def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (from /proc/<pid>/stat); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_info() -> dict[str, Any]:
    return {**common_machine_info(), "nproc": os.cpu_count(), "grpcio": grpc.__version__}


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


# ---- what a simulated VMA sends --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VmaSpec:
    index: int
    appliance_id: str
    credential: str
    job_id: str
    disk_ids: tuple[str, ...]
    #: the appliance's key and client certificate (the TLS run: mutual TLS on the appliance port)
    key_pem: bytes = b""
    cert_pem: bytes = b""


def progress_request(spec: VmaSpec, seq: int) -> gateway_pb2.ConnectRequest:
    """An absolute report: every disk copied CHUNK more bytes than at the previous sequence."""
    done = min(DISK_BYTES, seq * CHUNK)
    report = stream_pb2.ProgressReport(
        job_id=spec.job_id,
        sequence=seq,
        phase=jobs_pb2.COPY_PHASE_COPYING,
        current_operation="Copying disk 1 of 2",
        bytes_done=done * len(spec.disk_ids),
        bytes_total=DISK_BYTES * len(spec.disk_ids),
        throughput_bytes_per_second=128 << 20,
        disks=[
            stream_pb2.DiskProgress(
                disk_id=disk_id,
                bytes_done=done,
                bytes_total=DISK_BYTES,
                throughput_bytes_per_second=64 << 20,
                phase=jobs_pb2.COPY_PHASE_COPYING,
                mode=jobs_pb2.COPY_MODE_FULL,
                resume_token=str(seq),
            )
            for disk_id in spec.disk_ids
        ],
    )
    report.eta.FromSeconds(1200)
    report.sent_at.FromNanoseconds(time.time_ns())
    return gateway_pb2.ConnectRequest(progress=report)


@dataclass
class DriverParams:
    target: str
    rate: float
    seconds: float
    mode: str  # "oma" | "echo"
    streams: int = 1
    heartbeat_s: float = 10.0
    ca_pem: bytes = b""  # the OMA's CA: dial TLS verified against it; empty: plaintext
    appliance_target: str = ""  # the appliance port, for VMAs with a client certificate


@dataclass
class VmaResult:
    index: int
    welcomed: bool = False
    open_at_end: bool = False
    error: str = ""
    sent: dict[int, float] = field(default_factory=dict)  # sequence -> send time (only the measured reports)
    acks: list[tuple[float, int]] = field(default_factory=list)  # (receipt time, reports newly covered)
    commit_s: list[float] = field(default_factory=list)  # ack (or echo) receipt - send, per report
    stream_errors: int = 0
    commands: int = 0


class SimVma:
    """One VMA's stream: hello + started event (warm-up), then paced reports; acks (or echoes) read concurrently."""

    def __init__(self, spec: VmaSpec, params: DriverParams) -> None:
        self.spec = spec
        self.params = params
        self.result = VmaResult(spec.index)
        self.channel: grpc.aio.Channel | None = None
        self.call: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.acked = 0
        self.started_acked = asyncio.Event()
        self.last_seq = 0
        self.done_sending = False
        self.all_acked = asyncio.Event()

    async def connect(self) -> None:
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
        if self.spec.cert_pem and self.params.mode == "oma":  # mutual TLS, as a joined appliance dials
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.params.ca_pem,
                private_key=self.spec.key_pem,
                certificate_chain=self.spec.cert_pem,
            )
            self.channel = grpc.aio.secure_channel(self.params.appliance_target, credentials, options=options)
        elif self.params.ca_pem:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.params.ca_pem)
            self.channel = grpc.aio.secure_channel(self.params.target, credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(self.params.target, options=options)
        if self.params.mode == "echo":
            self.call = self.channel.stream_stream(
                ECHO_METHOD,
                request_serializer=gateway_pb2.ConnectRequest.SerializeToString,
                response_deserializer=gateway_pb2.ConnectRequest.FromString,
            )()
            self.result.welcomed = True
            self.reader = asyncio.create_task(self._read_echo())
            return
        self.call = gateway_pb2_grpc.VmaGatewayServiceStub(self.channel).Connect()
        await self.call.write(
            gateway_pb2.ConnectRequest(
                hello=stream_pb2.Hello(
                    appliance_id=self.spec.appliance_id,
                    credential="" if self.spec.cert_pem else self.spec.credential,
                    agent_version="bench",
                    capabilities=["progress"],
                )
            )
        )
        first = await asyncio.wait_for(self.call.read(), 60)
        if first is grpc.aio.EOF or first.WhichOneof("message") != "welcome":
            raise RuntimeError(f"VMA {self.spec.index}: no welcome ({first})")
        self.result.welcomed = True
        cursors = {c.job_id: c.last_applied_sequence for c in first.welcome.open_jobs}
        self.acked = self.last_seq = cursors.get(self.spec.job_id, 0)
        self.reader = asyncio.create_task(self._read_oma())
        self.last_seq += 1
        await self.call.write(
            gateway_pb2.ConnectRequest(
                event=stream_pb2.JobEvent(
                    job_id=self.spec.job_id, sequence=self.last_seq, started=stream_pb2.JobStarted()
                )
            )
        )
        await asyncio.wait_for(self.started_acked.wait(), 60)

    async def _read_oma(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    self.result.error = self.result.error or "stream ended by the server"
                    return
                kind = msg.WhichOneof("message")
                if kind == "ack":
                    self._on_ack(msg.ack.sequence)
                elif kind == "command":
                    self.result.commands += 1
                elif kind == "error":
                    self.result.stream_errors += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.result.error = self.result.error or f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.all_acked.set()
            self.started_acked.set()

    def _on_ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        now = time.time()
        sent = self.result.sent
        covered = 0
        for s in range(self.acked + 1, seq + 1):
            t = sent.get(s)
            if t is not None:
                self.result.commit_s.append(now - t)
                covered += 1
        self.acked = seq
        if self.done_sending and seq >= self.last_seq:
            self.all_acked.set()
        if covered:
            self.result.acks.append((now, covered))
        self.started_acked.set()

    async def _read_echo(self) -> None:
        try:
            async for msg in self.call:
                now = time.time()
                seq = msg.progress.sequence
                t = self.result.sent.get(seq)
                if t is not None:
                    self.result.commit_s.append(now - t)
                    self.result.acks.append((now, 1))
                self.acked = max(self.acked, seq)
                if self.done_sending and self.acked >= self.last_seq:
                    self.all_acked.set()
            self.result.error = self.result.error or "stream ended by the server"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.result.error = self.result.error or f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.all_acked.set()

    async def run(self, t0: float) -> None:
        """Reports at `rate` per second from t0 (phase spread by index) until t0 + seconds."""
        params = self.params
        period = 1.0 / params.rate
        offset = (self.spec.index % params.streams) / params.streams * period
        end = t0 + params.seconds
        next_heartbeat = t0 + params.heartbeat_s
        k = 0
        try:
            while True:
                due = t0 + offset + k * period
                if due >= end:
                    break
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.reader is not None and self.reader.done():
                    return
                self.last_seq += 1
                request = progress_request(self.spec, self.last_seq)
                self.result.sent[self.last_seq] = time.time()
                await self.call.write(request)
                if params.mode == "oma" and time.time() >= next_heartbeat:
                    next_heartbeat += params.heartbeat_s
                    hb = stream_pb2.Heartbeat(running_job_ids=[self.spec.job_id])
                    hb.sent_at.GetCurrentTime()
                    await self.call.write(gateway_pb2.ConnectRequest(heartbeat=hb))
                k += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.result.error = self.result.error or f"send: {type(exc).__name__}: {exc}"[:300]

    async def drain(self, deadline: float) -> None:
        """Wait (until `deadline`) for the acks (or echoes) of everything sent."""
        self.done_sending = True
        if self.acked >= self.last_seq or (self.reader is not None and self.reader.done()):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_acked.wait(), max(0.0, deadline - time.time()))

    async def close(self) -> None:
        self.result.open_at_end = bool(self.reader is not None and not self.reader.done() and not self.result.error)
        if self.call is not None:
            self.call.cancel()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        if self.channel is not None:
            await self.channel.close()


class Driver:
    """A group of simulated VMAs in one process."""

    def __init__(self, specs: list[VmaSpec], params: DriverParams) -> None:
        self.vmas = [SimVma(s, params) for s in specs]
        self.params = params
        self.connect_s = 0.0

    async def prepare(self) -> int:
        started = time.time()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(vma: SimVma) -> None:
            async with gate:
                try:
                    await vma.connect()
                except Exception as exc:
                    vma.result.error = f"connect: {type(exc).__name__}: {exc}"[:300]

        await asyncio.gather(*(one(v) for v in self.vmas))
        self.connect_s = time.time() - started
        return sum(1 for v in self.vmas if v.result.welcomed and not v.result.error)

    async def run(self, t0: float) -> dict[str, Any]:
        ok = [v for v in self.vmas if v.result.welcomed and not v.result.error]
        await asyncio.gather(*(v.run(t0) for v in ok))
        deadline = time.time() + ACK_GRACE_S
        await asyncio.gather(*(v.drain(deadline) for v in ok))
        for v in self.vmas:
            await v.close()
        return {
            "connect_s": self.connect_s,
            "results": [asdict(v.result) for v in self.vmas],
            "cpu_s": cpu_seconds(os.getpid()),
        }


def _worker_entry(conn: Connection, specs: list[VmaSpec], params: DriverParams, nofile: int) -> None:
    raise_nofile(nofile)

    async def main() -> None:
        driver = Driver(specs, params)
        ready = await driver.prepare()
        conn.send(("ready", ready, driver.connect_s))
        loop = asyncio.get_running_loop()
        t0 = await loop.run_in_executor(None, conn.recv)
        conn.send(("done", await driver.run(t0)))

    try:
        asyncio.run(main())
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


class VmaFleet:
    """The N VMAs, in this process (workers=0) or split over worker processes."""

    def __init__(self, specs: list[VmaSpec], params: DriverParams, workers: int, nofile: int) -> None:
        self.specs = specs
        self.params = params
        self.workers = workers
        self.nofile = nofile
        self.local: Driver | None = None
        self.procs: list[tuple[Any, Connection]] = []

    async def prepare(self) -> tuple[int, float]:
        if self.workers == 0:
            self.local = Driver(self.specs, self.params)
            ready = await self.local.prepare()
            return ready, self.local.connect_s
        ctx = mp.get_context("spawn")
        for w in range(self.workers):
            parent, child = ctx.Pipe()
            part = self.specs[w :: self.workers]
            proc = ctx.Process(target=_worker_entry, args=(child, part, self.params, self.nofile), daemon=True)
            proc.start()
            self.procs.append((proc, parent))
        loop = asyncio.get_running_loop()
        ready, connect_s = 0, 0.0
        for _, conn in self.procs:
            msg = await loop.run_in_executor(None, conn.recv)
            if msg[0] != "ready":
                raise RuntimeError(f"VMA worker failed: {msg[1]}")
            ready += msg[1]
            connect_s = max(connect_s, msg[2])
        return ready, connect_s

    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.procs if p.pid is not None] or [os.getpid()]

    async def run(self, t0: float) -> tuple[list[dict[str, Any]], float]:
        """(per-VMA results, CPU seconds of the worker processes)."""
        if self.local is not None:
            out = await self.local.run(t0)
            return out["results"], 0.0
        for _, conn in self.procs:
            conn.send(t0)
        loop = asyncio.get_running_loop()
        results: list[dict[str, Any]] = []
        cpu = 0.0
        for _, conn in self.procs:
            msg = await loop.run_in_executor(None, conn.recv)
            if msg[0] != "done":
                raise RuntimeError(f"VMA worker failed: {msg[1]}")
            results += msg[1]["results"]
            cpu += msg[1]["cpu_s"]
        return results, cpu

    def stop(self) -> None:
        for proc, conn in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()
        self.procs.clear()


# ---- watchers --------------------------------------------------------------------------------------------------------
class Watcher:
    def __init__(self, target: str, token: str, ca_pem: bytes = b"") -> None:
        self.target = target
        self.token = token  # WatchJobs needs a viewer's token
        self.ca_pem = ca_pem  # empty: plaintext
        self.records: list[tuple[str, int, float]] = []  # (job id, last_sequence, receipt time)
        self.synced = asyncio.Event()
        self.updates = 0
        self.error = ""
        self.task: asyncio.Task[None] | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        endpoint = (
            Endpoint(self.target, self.ca_pem, token=self.token)
            if self.ca_pem
            else Endpoint(self.target, insecure=True, token=self.token)
        )
        self.channel = aio_channel(endpoint, [("grpc.use_local_subchannel_pool", 1)])
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.synced.wait(), 120)

    async def _run(self) -> None:
        assert self.channel is not None
        stub = job_pb2_grpc.JobServiceStub(self.channel)
        records = self.records
        change = job_pb2.UPDATE_KIND_CHANGE
        try:
            async for response in stub.WatchJobs(job_pb2.WatchJobsRequest()):
                update = response.update
                self.updates += 1
                if update.kind == change:
                    job = update.replication_job
                    records.append((job.id, job.last_sequence, time.time()))
                elif update.kind == job_pb2.UPDATE_KIND_SYNCED:
                    self.synced.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:300]

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.channel is not None:
            await self.channel.close()


# ---- processes -------------------------------------------------------------------------------------------------------
class Proc:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def wait_ready(self, check: Any, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            with contextlib.suppress(Exception):
                if await check():
                    return
            if time.time() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")
            await asyncio.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log_file.close()


def start_profiler(path: str, pid: int, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) sampling the server over the send window, collapsed stacks for flame graphs."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [
        spy,
        "record",
        "-p",
        str(pid),
        "-d",
        str(int(seconds)),
        "-r",
        "200",
        "-f",
        "raw",
        "-o",
        path,
        "--nonblocking",
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stdout_says_ready(log: Path) -> Any:
    async def check() -> bool:
        return "ready" in await asyncio.to_thread(log.read_text, errors="replace")

    return check


def grpc_healthy(target: str, ca_file: Path | None = None) -> Any:
    """A readiness check of a gRPC server; over TLS verified against `ca_file` once the server has written it."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def channel_of() -> grpc.aio.Channel:
        if ca_file is None:
            return grpc.aio.insecure_channel(target)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
        return grpc.aio.secure_channel(target, credentials)

    async def check() -> bool:
        if ca_file is not None and not await asyncio.to_thread(ca_file.exists):
            return False
        async with channel_of() as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return check


# ---- setup -----------------------------------------------------------------------------------------------------------
async def seed(data_dir: Path, database: str, n: int, certificates: bool = False) -> list[VmaSpec]:
    """N enrolled appliances, each with one VM (2 disks) and one dispatched job, through the real services; with
    `certificates` each also joins (its own key, a CSR, the join token) and gets its client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from oma_server.app import App
    from oma_server.db.models import Disk, VmContext
    from oma_server.replication.state_machine import DiskState
    from oma_server.settings import Settings

    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        database=database,
        nbd_listen=f"127.0.0.1:{free_port()}",
        appliance_listen="127.0.0.1:0",
        allow_credential_hello=True,  # the simulated VMAs hello with their enrollment credential
    )
    app = App(settings)
    await app.start()
    specs: list[VmaSpec] = []
    try:
        for i in range(n):
            enrollment = await app.appliances.enroll(f"bench-vma-{i:05d}-{uuid.uuid4().hex[:6]}")
            appliance_id = enrollment.appliance.id

            def make_vm(appliance_id: str = appliance_id, i: int = i) -> list[Disk]:
                vm = VmContext.create(
                    appliance=appliance_id, vcenter="vc.bench", vm_uuid=str(uuid.uuid4()), name=f"bench-vm-{i:05d}"
                )
                return [
                    Disk.create(vm_context=vm.id, key=2000 + d, capacity_bytes=DISK_BYTES, unit_number=d)
                    for d in range(2)
                ]

            disks = await app.db.tx(make_vm)
            job = await app.jobs.create(
                vm_context_id=disks[0].vm_context_id,
                appliance_id=appliance_id,
                kind="initial",
                disks=[
                    DiskState(
                        disk_id=d.id, disk_key=d.key, bytes_total=DISK_BYTES, mode="full", nbd_uri=f"nbd://x/{d.id}"
                    )
                    for d in disks
                ],
            )
            await app.replication.dispatch(job.id, f"vm-uuid-{i}", {d.id: DISK_BYTES for d in disks})
            key_pem = cert_pem = b""
            if certificates:
                key = ec.generate_private_key(ec.SECP256R1())
                csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
                issued = await app.appliance_certificates.join(
                    enrollment.join_token, csr.public_bytes(serialization.Encoding.PEM).decode()
                )
                cert_pem = issued.certificate_pem.encode()
                key_pem = key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            disk_ids = tuple(d.id for d in disks)
            specs.append(VmaSpec(i, appliance_id, enrollment.credential, job.id, disk_ids, key_pem, cert_pem))
    finally:
        await app.stop()
    return specs


# ---- analysis --------------------------------------------------------------------------------------------------------
def windowed_rate(results: list[dict[str, Any]], start: float, end: float) -> float:
    """Reports acked (or echoed) with receipt in [start, end), per second."""
    count = sum(n for r in results for (t, n) in r["acks"] if start <= t < end)
    return count / max(1e-9, end - start)


def watch_latencies(
    results: list[dict[str, Any]], specs: list[VmaSpec], watchers: list[Watcher]
) -> tuple[list[float], int]:
    """(receipt - send of the reported sequence, for every change a watcher got of a measured report; count)."""
    sent_by_job: dict[str, dict[int, float]] = {}
    for spec, r in zip(specs, results, strict=True):
        sent_by_job[spec.job_id] = {int(k): v for k, v in r["sent"].items()}
    out: list[float] = []
    for w in watchers:
        for job_id, seq, t in w.records:
            sent = sent_by_job.get(job_id, {}).get(seq)
            if sent is not None:
                out.append(t - sent)
    return out, len(out)


# ---- the runs --------------------------------------------------------------------------------------------------------
@dataclass
class Args:
    streams: int
    rate: float
    seconds: float
    watchers: int
    workers: int
    database: str
    json: str
    skip_echo: bool
    skip_poll: bool
    keep: bool
    profile: str = ""
    flush_interval: float = 1.0
    tls: bool = False
    processes: int = 0


async def run_oma(args: Args, tmp: Path, nofile: int, out: dict[str, Any], tls: bool = False) -> None:
    """The OMA phase; `tls`: the default transport — the server on its own CA, watchers verifying it, and every VMA
    joined and dialling the appliance port with its client certificate (mutual TLS)."""
    data_dir = tmp / ("oma-tls" if tls else "oma")
    t = time.time()
    specs = await seed(data_dir, args.database, args.streams, certificates=tls)
    out["setup_s"] = round(time.time() - t, 2)
    print(f"  seeded {len(specs)} appliances + jobs in {out['setup_s']} s", flush=True)
    port = free_port()
    target = f"127.0.0.1:{port}"
    appliance_target = f"127.0.0.1:{free_port()}"
    # BENCH_OMA_SERVER_SCRIPT: run a script (say, a patched server for an experiment) instead of oma_server.cli.
    script = os.environ.get("BENCH_OMA_SERVER_SCRIPT", "")
    argv = [
        sys.executable,
        *([script] if script else ["-m", "oma_server.cli"]),
        "serve",
        "--listen",
        target,
        "--data-dir",
        str(data_dir),
        "--nbd-listen",
        f"127.0.0.1:{free_port()}",
        "--appliance-listen",
        appliance_target,
        "--log-level",
        "WARNING",
        "--progress-flush-interval",
        str(args.flush_interval),
    ]
    if not tls:
        argv.append(
            "--insecure"
        )  # plaintext (credential hellos), as the figures in bench/README.md were first measured
    if args.database:
        argv += ["--database", args.database]
    server = Proc("oma-server", argv, tmp / f"oma-server{'-tls' if tls else ''}.log")
    ca_file = data_dir / "tls" / "ca.crt"  # made by the server at its first start
    watchers: list[Watcher] = []
    fleet: VmaFleet | None = None
    try:
        await server.wait_ready(grpc_healthy(target, ca_file if tls else None), 90)
        ca_pem = ca_file.read_bytes() if tls else b""
        params = DriverParams(
            target, args.rate, args.seconds, "oma", args.streams, ca_pem=ca_pem, appliance_target=appliance_target
        )
        fleet = VmaFleet(specs, params, args.workers, nofile)
        # the seeding App's first start wrote the initial admin token to the data dir
        token = (data_dir / "admin.token").read_text().strip()
        watchers = [Watcher(target, token, ca_pem) for _ in range(args.watchers)]
        rss_idle = proc_status_kib(server.pid, "VmRSS")
        for w in watchers:
            await w.start()
        ready, connect_s = await fleet.prepare()
        # Every stream open and warmed up, nothing flowing yet: what a connected, idle appliance costs the server.
        await asyncio.sleep(1.0)
        rss_connected = proc_status_kib(server.pid, "VmRSS")
        out["rss_per_stream_kib"] = round((rss_connected - rss_idle) / max(1, ready), 1)
        out["connect_s"] = round(connect_s, 2)
        print(f"  {ready}/{len(specs)} streams welcomed and warmed up in {connect_s:.1f} s", flush=True)
        t0 = time.time() + 0.5
        cpu_server0 = cpu_seconds(server.pid)
        cpu_bench0 = sum(cpu_seconds(p) for p in {os.getpid(), *fleet.pids()})
        run = asyncio.create_task(fleet.run(t0))
        profiler = start_profiler(args.profile, server.pid, args.seconds) if args.profile else None
        rss_samples: list[int] = []
        while time.time() < t0 + args.seconds:
            await asyncio.sleep(0.5)
            rss_samples.append(proc_status_kib(server.pid, "VmRSS"))
        wall = time.time() - t0
        cpu_server = cpu_seconds(server.pid) - cpu_server0
        cpu_bench = sum(cpu_seconds(p) for p in {os.getpid(), *fleet.pids()}) - cpu_bench0
        rss_end = proc_status_kib(server.pid, "VmRSS")
        results, _ = await run
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 60)
            print(f"  server profile (py-spy, collapsed stacks): {args.profile}", flush=True)
        watch_s, _ = watch_latencies(results, specs, watchers)
        commit_s = [x for r in results for x in r["commit_s"]]
        sent = sum(len(r["sent"]) for r in results)
        acked = sum(len(r["commit_s"]) for r in results)
        errors = [r["error"] for r in results if r["error"]]
        out.update(
            streams=args.streams,
            streams_welcomed=sum(1 for r in results if r["welcomed"]),
            streams_held=sum(1 for r in results if r["open_at_end"]),
            offered_reports_per_s=round(args.streams * args.rate, 1),
            reports_sent=sent,
            reports_acked=acked,
            reports_per_s=round(windowed_rate(results, t0 + WARM_S, t0 + args.seconds), 1),
            p50_watch_ms=ms(pct(watch_s, 50)),
            p99_watch_ms=ms(pct(watch_s, 99)),
            max_watch_ms=ms(max(watch_s, default=float("nan"))),
            watch_updates=sum(w.updates for w in watchers),
            watch_updates_per_watcher_per_s=round(
                sum(len(w.records) for w in watchers) / max(1, len(watchers)) / wall, 1
            ),
            watch_coverage=round(len(watch_s) / max(1, sent * len(watchers)), 3),
            p50_commit_ms=ms(pct(commit_s, 50)),
            p99_commit_ms=ms(pct(commit_s, 99)),
            rss_mib=round(rss_end / 1024, 1),
            rss_idle_mib=round(rss_idle / 1024, 1),
            rss_peak_mib=round(max([rss_end, *rss_samples]) / 1024, 1),
            server_cpu_pct=round(100 * cpu_server / wall, 1),
            bench_cpu_pct=round(100 * cpu_bench / wall, 1),
            stream_errors=sum(r["stream_errors"] for r in results),
            vma_errors=len(errors),
            vma_error_sample=errors[:3],
            watcher_errors=[w.error for w in watchers if w.error],
        )
    finally:
        for w in watchers:
            await w.stop()
        if fleet is not None:
            fleet.stop()
        server.stop()
    if server.popen.returncode not in (0, None):
        out["server_exit"] = server.popen.returncode
        out["server_log_tail"] = server.tail(15)


async def run_echo(args: Args, tmp: Path, nofile: int, out: dict[str, Any]) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    log = tmp / "echo.log"
    server = Proc("echo-server", [sys.executable, "-m", "bench._progress_servers", "echo", str(port)], log)
    specs = [
        VmaSpec(i, f"app-{i:05d}", "x", str(uuid.uuid4()), (str(uuid.uuid4()), str(uuid.uuid4())))
        for i in range(args.streams)
    ]
    fleet = VmaFleet(specs, DriverParams(target, args.rate, args.seconds, "echo", args.streams), args.workers, nofile)
    try:
        await server.wait_ready(stdout_says_ready(log), 30)
        await fleet.prepare()
        t0 = time.time() + 0.5
        cpu0 = cpu_seconds(server.pid)
        results, _ = await fleet.run(t0)
        wall = args.seconds
        rtt = [x for r in results for x in r["commit_s"]]
        out.update(
            echo_reports_per_s=round(windowed_rate(results, t0 + WARM_S, t0 + args.seconds), 1),
            echo_p50_rtt_ms=ms(pct(rtt, 50)),
            echo_p99_rtt_ms=ms(pct(rtt, 99)),
            echo_server_cpu_pct=round(100 * (cpu_seconds(server.pid) - cpu0) / (wall + ACK_GRACE_S), 1),
            echo_streams_held=sum(1 for r in results if r["open_at_end"]),
            echo_rss_mib=round(proc_status_kib(server.pid, "VmRSS") / 1024, 1),
        )
    finally:
        fleet.stop()
        server.stop()


async def run_poll(args: Args, tmp: Path, out: dict[str, Any]) -> None:
    import aiohttp

    port = free_port()
    log = tmp / "poll.log"
    argv = [sys.executable, "-m", "bench._progress_servers", "poll", str(port), str(args.streams), str(args.rate)]
    server = Proc("poll-target", argv, log)
    n = args.streams
    seen: list[list[tuple[float, float]]] = [[] for _ in range(n)]  # per VMA: (receipt, sent_at)
    errors = 0
    try:
        await server.wait_ready(stdout_says_ready(log), 30)
        await asyncio.sleep(1.0 / args.rate + 0.1)  # every VMA has a report
        connector = aiohttp.TCPConnector(limit=POLL_IN_FLIGHT)
        async with aiohttp.ClientSession(connector=connector) as session:
            gate = asyncio.Semaphore(POLL_IN_FLIGHT)

            async def poll(v: int) -> None:
                nonlocal errors
                async with gate:
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/progress/vma-{v:05d}") as resp:
                            body = await resp.read()
                        seen[v].append((time.time(), float(json.loads(body)["sent_at"])))
                    except Exception:
                        errors += 1

            t0 = time.time()
            end = t0 + max(args.seconds, 2 * POLL_INTERVAL_S)  # at least two poll cycles
            cycles: list[float] = []
            while time.time() < end:
                started = time.time()
                await asyncio.gather(*(poll(v) for v in range(n)))
                cycles.append(time.time() - started)
                next_cycle = started + POLL_INTERVAL_S
                if next_cycle >= end:
                    break
                await asyncio.sleep(max(0.0, next_cycle - time.time()))
            end = max(end, time.time())
        fetch_age = [r - s for per in seen for (r, s) in per]
        # Age of the poller's view of each VMA, sampled every 100 ms once the first cycle had its chance.
        view_age: list[float] = []
        receipts = [[r for (r, _) in per] for per in seen]
        t = t0 + POLL_INTERVAL_S
        while t < end:
            for v in range(n):
                k = bisect.bisect_right(receipts[v], t) - 1
                view_age.append(t - seen[v][k][1] if k >= 0 else t - t0)
            t += 0.1
        windows = max(1, int((end - t0) // POLL_INTERVAL_S))
        missed = []
        for w in range(windows):
            lo, hi = t0 + w * POLL_INTERVAL_S, t0 + (w + 1) * POLL_INTERVAL_S
            missed.append(sum(1 for v in range(n) if not any(lo <= r < hi for r in receipts[v])))
        out.update(
            poll_p99_staleness_ms=ms(pct(view_age, 99)),
            poll_p50_staleness_ms=ms(pct(view_age, 50)),
            poll_p99_fetch_age_ms=ms(pct(fetch_age, 99)),
            poll_cycle_s=round(max(cycles, default=0.0), 3),
            poll_never_polled_in_5s_window=max(missed),
            poll_errors=errors,
        )
    finally:
        server.stop()


def tls_ratios(plain: dict[str, Any], tls: dict[str, Any]) -> dict[str, float]:
    """TLS / plaintext of the same load in the same run: reports applied per second (≥ 0.9 is the target) and
    server CPU per applied report (plaintext's / TLS's, so that 1.0 is free and lower is dearer)."""

    def cpu_per_report(o: dict[str, Any]) -> float:
        return float(o.get("server_cpu_pct", 0)) / max(1e-9, float(o.get("reports_per_s", 0)))

    ratios = {"tls_ratio_reports": round(float(tls.get("reports_per_s", 0)) / max(1e-9, plain["reports_per_s"]), 3)}
    if cpu_per_report(tls) > 0:
        ratios["tls_ratio_server_cpu"] = round(cpu_per_report(plain) / cpu_per_report(tls), 3)
    if tls.get("p99_watch_ms"):
        ratios["tls_p99_watch_ms"] = tls["p99_watch_ms"]
    return ratios


def print_table(out: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    rows: list[tuple[str, str, str]] = [
        (
            "streams held / welcomed / N",
            f"{out.get('streams_held')} / {out.get('streams_welcomed')} / {out['streams']}",
            "target: all N held",
        ),
        ("offered reports/s", fmt(out.get("offered_reports_per_s")), ""),
        ("OMA reports/s applied (acked)", fmt(out.get("reports_per_s")), ""),
        (
            "watch latency p50 / p99 ms",
            f"{fmt(out.get('p50_watch_ms'))} / {fmt(out.get('p99_watch_ms'))}",
            "target: p99 < 100",
        ),
        ("watch coverage (updates/sent/watcher)", fmt(out.get("watch_coverage")), "<1: coalesced"),
        (
            "DB commit latency p50 / p99 ms",
            f"{fmt(out.get('p50_commit_ms'))} / {fmt(out.get('p99_commit_ms'))}",
            f"flush every {out['params']['flush_interval']} s",
        ),
        ("server RSS end / peak MiB", f"{fmt(out.get('rss_mib'))} / {fmt(out.get('rss_peak_mib'))}", ""),
        ("server RSS per connected idle stream KiB", fmt(out.get("rss_per_stream_kib")), "target: <= 64"),
        ("server CPU %", fmt(out.get("server_cpu_pct")), "of one core"),
        ("bench CPU % (VMAs + watchers)", fmt(out.get("bench_cpu_pct")), ""),
        (
            "TLS: reports/s applied; ratio to plaintext",
            f"{fmt(out.get('tls', {}).get('reports_per_s'))}; {fmt(out.get('tls_ratio_reports'))}",
            "--tls; target: >= 0.9",
        ),
        ("TLS: server CPU per report, plaintext / TLS", fmt(out.get("tls_ratio_server_cpu")), "1.0: free"),
        ("TLS: watch latency p99 ms", fmt(out.get("tls_p99_watch_ms")), ""),
        ("echo reports/s", fmt(out.get("echo_reports_per_s")), ""),
        ("echo RTT p50 / p99 ms", f"{fmt(out.get('echo_p50_rtt_ms'))} / {fmt(out.get('echo_p99_rtt_ms'))}", ""),
        ("echo server CPU %", fmt(out.get("echo_server_cpu_pct")), ""),
        ("ratio_to_echo", fmt(out.get("ratio_to_echo")), "target: >= 0.3"),
        (
            "old poll: view staleness p50 / p99 ms",
            f"{fmt(out.get('poll_p50_staleness_ms'))} / {fmt(out.get('poll_p99_staleness_ms'))}",
            "",
        ),
        ("old poll: VMAs unpolled in a 5 s window", fmt(out.get("poll_never_polled_in_5s_window")), ""),
    ]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>{vwidth}}  {note}")


async def main_async(args: Args) -> dict[str, Any]:
    nofile = raise_nofile(4 * args.streams + 1024)
    tmp = Path(tempfile.mkdtemp(prefix="bench-progress-"))
    out: dict[str, Any] = {
        "benchmark": "progress",
        "params": {k: v for k, v in asdict(args).items() if k not in ("json", "keep")},
        "machine": machine_info(),
        "streams": args.streams,
    }
    out["params"]["database"] = "postgresql" if args.database else "sqlite"
    try:
        if args.processes:
            from bench.progress_cluster import run_cluster

            await run_cluster(args, args.processes, tmp, nofile, out)
            return out
        print(
            f"[1/3] OMA: {args.streams} streams x {args.rate}/s for {args.seconds} s, {args.watchers} watchers",
            flush=True,
        )
        await run_oma(args, tmp, nofile, out)
        if args.tls:
            print("[1b/3] OMA as by default (TLS; VMAs by certificate, mutual TLS), the same load", flush=True)
            tls_out: dict[str, Any] = {}
            await run_oma(args, tmp, nofile, tls_out, tls=True)
            out["tls"] = tls_out
            out.update(tls_ratios(out, tls_out))
        if not args.skip_echo:
            print("[2/3] echo ceiling (raw grpc.aio)", flush=True)
            await run_echo(args, tmp, nofile, out)
            if out.get("echo_reports_per_s"):
                out["ratio_to_echo"] = round(out["reports_per_s"] / out["echo_reports_per_s"], 3)
        if not args.skip_poll:
            print(f"[3/3] old design: HTTP poll every {POLL_INTERVAL_S:.0f} s, {POLL_IN_FLIGHT} in flight", flush=True)
            await run_poll(args, tmp, out)
    finally:
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def parse(argv: list[str] | None) -> Args:
    p = argparse.ArgumentParser(prog="python -m bench.progress", description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=1000, help="simulated VMAs, one stream each (default 1000)")
    p.add_argument("--rate", type=float, default=2.0, help="progress reports per second per VMA (default 2)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each measured run (default 20)")
    p.add_argument("--watchers", type=int, default=2, help="WatchJobs streams (default 2)")
    p.add_argument("--workers", type=int, default=1, help="processes driving the VMAs; 0 = this process (default 1)")
    p.add_argument("--database", default="", help="postgresql://… (default: SQLite in a temp dir)")
    p.add_argument("--json", default="", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 streams, 3 s")
    p.add_argument("--skip-echo", action="store_true", help="skip the echo ceiling")
    p.add_argument("--skip-poll", action="store_true", help="skip the old-design poll floor")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    p.add_argument("--flush-interval", type=float, default=1.0, help="the server's --progress-flush-interval")
    p.add_argument("--profile", default="", metavar="FILE", help="py-spy the server over the run (collapsed stacks)")
    p.add_argument(
        "--tls",
        action="store_true",
        help="also run the OMA phase as by default (TLS; VMAs with client certificates on the appliance port, mutual "
        "TLS) and report it / plaintext",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="N >= 2: one OMA process and then N on one PostgreSQL (--database, or one started here), the same load "
        "per process, watchers on process 0 (bench/progress_cluster.py)",
    )
    ns = p.parse_args(argv)
    if ns.quick:
        ns.streams, ns.seconds = min(ns.streams, 20), min(ns.seconds, 3.0)
    if ns.streams < 1 or ns.rate <= 0 or ns.seconds <= WARM_S:
        p.error(f"--streams >= 1, --rate > 0 and --seconds > {WARM_S} are required")
    return Args(
        ns.streams,
        ns.rate,
        ns.seconds,
        ns.watchers,
        ns.workers,
        ns.database,
        ns.json,
        ns.skip_echo,
        ns.skip_poll,
        ns.keep,
        ns.profile,
        ns.flush_interval,
        ns.tls,
        ns.processes,
    )


def main(argv: list[str] | None = None) -> int:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    args = parse(argv)
    started = time.time()
    out = asyncio.run(main_async(args))
    out["total_s"] = round(time.time() - started, 1)
    print()
    if args.processes:
        from bench.progress_cluster import print_table as print_cluster_table

        print_cluster_table(out)
    else:
        print_table(out)
    if args.json:
        write_json(args.json, out)
        print(f"  wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
