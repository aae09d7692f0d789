"""`make demo`: the product's main job on the embedded defaults, end to end, with real parts.

oma-server (SQLite, in-process CloudStack simulator, real nbdkit, the dashboard and /metrics on a free port, behind
the operators' tokens)
+ the reference VMA agent (its "vCenter" is a
directory of raw images with change tracking) + omactl for live progress:

1. one VM with two disks of varied data and holes; the agent connects and the OMA discovers and registers the VM
2. initial replication, then a byte-for-byte check of every CloudStack volume against its source disk
3. simulated guest writes, an incremental replication (changed blocks only) under a bandwidth limit of the
   appliance set through the API (its effect checked), the byte check again
4. a schedule every 3 s that runs two incrementals by itself (the byte check again), its RPO, then paused
5. a test failover (the test VM's volumes checked against the source disks), then its cleanup
6. the cutover: a live failover (source powered off, final sync, the VM deployed on the replicas, checked against
   the source disks), then CompleteMigration (the VM context `completed`, the source's CBT and snapshots released)
7. a summary table per disk: bytes copied, time, throughput, change ids

Exit status 0 only if every step succeeded and every byte matched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import grpc
from cryptography import x509
from rich.console import Console
from rich.table import Table

from oma.v1 import (
    access_pb2,
    access_pb2_grpc,
    appliance_pb2,
    appliance_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vm_context_pb2,
    vm_context_pb2_grpc,
)
from oma_server.demo_support import DemoFailed, blkhash, wait_listening, wait_written, workspace
from oma_server.omactl.config import OMACTL_CONFIG_FILE
from oma_server.ports import free_port
from oma_server.security.ca import fingerprint
from vma_client_stubs.connection import Endpoint, sync_channel
from vma_client_stubs.secret_files import write_private

BIN = Path(sys.executable).parent
DISKS_MIB = (256, 128)
GUEST_WRITE_PERCENT = 5
LIMIT_MIB = 16  # the incremental's bandwidth limit (MiB/s): its ~19 MiB of changes take over a second
CHUNK = 4 << 20
console = Console()


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def run(*cmd: str | Path, live: bool = False, env: dict[str, str] | None = None) -> str:
    """Run a command; with `live` its output goes straight to the terminal (progress bars). `env` adds variables
    (a token: never on a command line, where every user's `ps` shows it)."""
    args = [str(c) for c in cmd]
    console.print(f"[dim]$ {' '.join(Path(args[0]).name if i == 0 else a for i, a in enumerate(args))}")
    environment = {**os.environ, **env} if env else None
    if live:
        code = subprocess.run(args, timeout=300, env=environment).returncode
        if code != 0:
            raise DemoFailed(f"{Path(args[0]).name} {' '.join(args[1:3])} failed (exit {code})")
        return ""
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=environment)
    if out.returncode != 0:
        raise DemoFailed(f"{' '.join(args[:3])} failed (exit {out.returncode}): {out.stderr.strip()}")
    return out.stdout


def same_bytes(source: Path, replica: Path) -> bool:
    """The replica holds the source's bytes, then only zeros (CloudStack rounds volume sizes up to whole GiB). The
    tail is read only where the replica's file has data: its holes are zeros (SEEK_DATA/SEEK_HOLE)."""
    size = source.stat().st_size
    with open(source, "rb") as a, open(replica, "rb") as b:
        done = 0
        while done < size:
            chunk = a.read(min(CHUNK, size - done))
            if b.read(len(chunk)) != chunk:
                return False
            done += len(chunk)
        end = os.fstat(b.fileno()).st_size
        offset = size
        while offset < end:
            try:
                offset = os.lseek(b.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: nothing but holes up to the end
                return True
            hole = os.lseek(b.fileno(), offset, os.SEEK_HOLE)
            b.seek(offset)
            while offset < hole:
                chunk = b.read(min(CHUNK, hole - offset))
                if chunk.count(0) != len(chunk):
                    return False
                offset += len(chunk)
    return True


class Demo:
    def __init__(self, root: Path, stack: ExitStack) -> None:
        self.root = root
        self.stack = stack
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.appliance_address = f"127.0.0.1:{free_port()}"
        self.nbd_address = f"127.0.0.1:{free_port()}"
        self.http_address = f"127.0.0.1:{int(os.environ.get('OMA_DEMO_HTTP_PORT', '0')) or free_port()}"
        self.vcenter = root / "vcenter"
        self.data_dir = root / "oma"
        #: the CA oma-server makes at its first start; every client of the demo verifies the OMA against it
        self.ca = self.data_dir / "tls" / "ca.crt"
        self.token_env: dict[str, str] = {}
        self.failures: list[str] = []
        self.limits: dict[str, str] = {}  # job id → the bandwidth limit it ran under

    def connect(self) -> None:
        """The demo's own operator channel: TLS, verified against the OMA's CA, with the initial admin token."""
        token = (self.data_dir / "admin.token").read_text().strip()
        # omactl runs with nothing but the config file the OMA's first start wrote (its address, CA, token file)
        self.token_env = {"OMA_CONFIG": str(self.data_dir / OMACTL_CONFIG_FILE), "OMA_SERVER": "", "OMA_CA": ""}
        self.token_env |= {"OMA_TOKEN": "", "OMA_INSECURE": ""}
        self.channel = sync_channel(Endpoint.from_ca_file(self.address, self.ca, token=token))
        self.stack.callback(self.channel.close)
        self.vms = vm_context_pb2_grpc.VmContextServiceStub(self.channel)
        self.jobs = replication_pb2_grpc.ReplicationServiceStub(self.channel)
        self.volumes = storage_pb2_grpc.VolumeServiceStub(self.channel)

    def spawn(self, name: str, *cmd: str | Path) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed by the exit stack
        self.stack.callback(log.close)
        proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT)

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()

        self.stack.callback(stop)
        return proc

    def omactl(self, *args: str, live: bool = False) -> str:
        return run(BIN / "omactl", *args, live=live, env=self.token_env)

    # ---- the steps ---------------------------------------------------------------------------------------------
    def start_oma(self) -> None:
        step("Start oma-server (SQLite, in-process CloudStack simulator, real nbdkit, dashboard; TLS with its own CA)")
        server = self.spawn(
            "oma-server",
            BIN / "oma-server",
            "--listen",
            self.address,
            "--data-dir",
            self.data_dir,
            "--nbd-listen",
            self.nbd_address,
            "--appliance-listen",
            self.appliance_address,
            "--http-listen",
            self.http_address,
            "--schedule-min-interval",
            "2",  # the demo's schedule runs seconds apart
        )
        wait_listening(self.port, server, "oma-server")
        # its first start's admin token, then the omactl config naming it (written after it, atomically)
        wait_written(self.data_dir / OMACTL_CONFIG_FILE, server, "oma-server")
        self.connect()
        ca_fingerprint = fingerprint(x509.load_pem_x509_certificate(self.ca.read_bytes()))
        console.print(
            f"oma-server serving TLS on {self.address} (operators, API tokens), mutual TLS on {self.appliance_address} "
            f"(appliances, client certificates of its CA), NBD over TLS on {self.nbd_address} (the same client "
            f"certificates required); logs in {self.root / 'oma-server.log'}"
        )
        console.print(f"its CA: {self.ca} ({ca_fingerprint[:23]}...); omactl and the agent verify the OMA with it")
        console.print(
            f"omactl runs with the config file of its first start, OMA_CONFIG={self.data_dir / OMACTL_CONFIG_FILE} "
            f"(the address, the CA and the initial admin token's file {self.data_dir / 'admin.token'})"
        )
        console.print(
            f"live dashboard: [bold]http://{self.http_address}/[/] (log in with that token)  ·  Prometheus metrics: "
            f"http://{self.http_address}/metrics (Authorization: Bearer <token>)  (OMA_DEMO_HTTP_PORT fixes the port)"
        )

    def test_failover_and_cleanup(self, vm_id: str) -> None:
        step("Test failover: snapshot, deploy the test VM on the replicas, boot it")
        self.omactl("network-map", "create", "--source", "VM Network", "--target", self.guest_network_id(),
                    "--vm", vm_id)  # fmt: skip
        self.omactl("preflight", vm_id, "--kind", "test", live=True)
        self.omactl("failover", "test", vm_id, "--watch", live=True)
        self.verify(vm_id, "test VM's volume", self.replicas_in_cloudstack(vm_id))

        step("Test failover cleanup: destroy the test VM, revert the volumes, leave them detached for the next run")
        self.omactl("failover", "cleanup", vm_id, "--watch", live=True)
        vm = self.vms.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id)).vm_context
        if vm.status != vm_context_pb2.VM_CONTEXT_STATUS_READY_FOR_FAILOVER:
            self.failures.append(f"after cleanup the VM is {vm_context_pb2.VmContextStatus.Name(vm.status)}")
        self.verify(vm_id, "CloudStack volume", self.replicas_in_cloudstack(vm_id))

    def cutover_and_complete(self, vm_id: str) -> replication_pb2.ReplicationJob:
        """Live failover (source off, final sync, the VM deployed on the replicas), then the migration closed."""
        step("Cutover: live failover (source powered off, final sync, the VM runs in CloudStack), then completion")
        run(BIN / "vma-agent", "guest-write", "--vcenter-dir", self.vcenter, "--vm", "demo-web",
            "--percent", "1", "--seed", "9")  # fmt: skip
        self.omactl("failover", "live", vm_id, "--watch", live=True)
        self.verify(vm_id, "live VM's volume", self.replicas_in_cloudstack(vm_id))
        self.omactl("vms", "complete", vm_id, live=True)
        vm = self.vms.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id)).vm_context
        if vm.status != vm_context_pb2.VM_CONTEXT_STATUS_COMPLETED:
            self.failures.append(f"after CompleteMigration the VM is {vm_context_pb2.VmContextStatus.Name(vm.status)}")
        listed = self.jobs.ListReplicationJobs(replication_pb2.ListReplicationJobsRequest(vm_context_id=vm_id))
        final = [j for j in listed.jobs if j.kind == replication_pb2.REPLICATION_JOB_KIND_FINAL]
        if not final:
            raise DemoFailed("the live failover ran no final sync")
        console.print(f"migration of {vm.name} completed: it runs in CloudStack, its source is released")
        return final[0]

    def check_dashboard(self) -> None:
        """The dashboard's data and /metrics answer only to a token: none is refused, a viewer's is served."""
        url = f"http://{self.http_address}/metrics"
        try:
            urllib.request.urlopen(url, timeout=10)
            self.failures.append("/metrics answered without a token")
        except urllib.error.HTTPError as refused:
            if refused.code != 401:
                self.failures.append(f"/metrics without a token answered {refused.code}, not 401")
        viewer = access_pb2_grpc.AccessServiceStub(self.channel).CreateApiToken(
            access_pb2.CreateApiTokenRequest(name="demo-prometheus", role=access_pb2.ROLE_VIEWER)
        )
        secret_file = self.root / "prometheus.token"  # as a scraper would keep it (credentials_file), 0600
        write_private(secret_file, viewer.secret.encode())
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {viewer.secret}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        copied = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("oma_bytes_copied_total{")
        )
        console.print(
            f"/metrics: 401 without a token; with a viewer token {len(text.splitlines())} lines, "
            f"oma_bytes_copied_total = {copied / (1 << 20):.0f} MiB"
        )

    def start_agent(
        self,
        vm_name: str = "demo-web",
        disks_mib: tuple[int, ...] = DISKS_MIB,
        agent_flags: tuple[str, ...] = (),
    ) -> tuple[str, str]:
        """Enroll an appliance, create the VM in the agent's vCenter, run the agent, discover and register the VM."""
        step(f"Reference VMA agent with one VM of {len(disks_mib)} disk(s) ({' + '.join(map(str, disks_mib))} MiB)")
        stub = appliance_pb2_grpc.ApplianceServiceStub(self.channel)
        # The operator enrolls (a one-time join token, in a 0600 file); the appliance joins: its own key, the OMA
        # verified by its CA fingerprint, a CSR traded for its client certificate. It then dials with mutual TLS.
        join_file, identity = self.root / "vma.join", self.root / "vma-identity"
        console.print(self.omactl("appliances", "enroll", "demo-vma", "--join-file", str(join_file)).strip())
        appliance_id = json.loads(join_file.read_text())["appliance_id"]
        console.print(run(BIN / "vma-agent", "enroll", "--join-file", join_file, "--identity-dir", identity).strip())
        sizes = [a for mib in disks_mib for a in ("--disk-mib", str(mib))]
        run(BIN / "vma-agent", "create-vm", "--vcenter-dir", self.vcenter, "--name", vm_name, *sizes)
        agent = self.spawn(
            "vma-agent",
            BIN / "vma-agent",
            "run",
            "--identity-dir",
            identity,
            "--vcenter-dir",
            self.vcenter,
            "--state-dir",
            self.root / "agent",
            *agent_flags,
        )
        deadline = time.monotonic() + 30
        while stub.GetAppliance(appliance_pb2.GetApplianceRequest(id=appliance_id)).appliance.connection_state != (
            appliance_pb2.CONNECTION_STATE_CONNECTED
        ):
            if agent.poll() is not None or time.monotonic() > deadline:
                raise DemoFailed("the agent did not connect; see vma-agent.log")
            time.sleep(0.05)
        console.print(f"appliance {appliance_id} connected with mutual TLS (its certificate names it)")
        found = self.vms.DiscoverVms(
            vm_context_pb2.DiscoverVmsRequest(appliance_id=appliance_id, name_filter=vm_name, register=True)
        )
        vm = found.vm_contexts[0]
        console.print(f"discovered and registered VM {vm.name} as VM context {vm.id}")
        return appliance_id, vm.id

    def replicate(self, vm_id: str, kind: str) -> replication_pb2.ReplicationJob:
        self.omactl("replicate", "start", vm_id, "--kind", kind, "--watch", live=True)
        jobs = self.jobs.ListReplicationJobs(replication_pb2.ListReplicationJobsRequest(vm_context_id=vm_id)).jobs
        job = jobs[0]
        if job.status != replication_pb2.REPLICATION_JOB_STATUS_COMPLETED:
            raise DemoFailed(f"{kind} replication ended {replication_pb2.ReplicationJobStatus.Name(job.status)}")
        return job

    def scheduled(self, vm_id: str, count: int = 2) -> list[replication_pb2.ReplicationJob]:
        """A schedule every 3 s: wait for `count` syncs it starts by itself to complete, then pause it and wait for
        whatever it started meanwhile (the failover needs the VM idle)."""
        request = replication_pb2.ListReplicationJobsRequest(vm_context_id=vm_id)
        before = {j.id for j in self.jobs.ListReplicationJobs(request).jobs}
        schedule_id = self.omactl(
            "-q", "schedules", "create", vm_id, "--every", "3s", "--rpo", "1m", "--name", "demo-every-3s"
        ).strip()
        console.print(f"schedule {schedule_id}: a sync every 3 s, RPO target 1 min; the OMA starts them itself")
        deadline = time.monotonic() + 60
        done: list[replication_pb2.ReplicationJob] = []
        while len(done) < count:
            if time.monotonic() > deadline:
                raise DemoFailed(f"the schedule completed {len(done)} of {count} syncs in 60 s")
            time.sleep(0.2)  # polling the API for the scheduler's jobs, not a synchronisation with it
            jobs = [j for j in self.jobs.ListReplicationJobs(request).jobs if j.id not in before]
            failed = [j for j in jobs if j.status == replication_pb2.REPLICATION_JOB_STATUS_FAILED]
            if failed:
                raise DemoFailed(f"scheduled job {failed[0].id} failed: {failed[0].error.message}")
            done = sorted(
                (j for j in jobs if j.status == replication_pb2.REPLICATION_JOB_STATUS_COMPLETED),
                key=lambda j: j.created_at.ToDatetime(),
            )
        self.omactl("schedules", "pause", schedule_id)
        while any(not j.HasField("finished_at") for j in self.jobs.ListReplicationJobs(request).jobs):
            time.sleep(0.1)  # a sync the schedule started just before the pause runs to its end
        for job in done[:count]:
            console.print(f"  scheduled {replication_pb2.ReplicationJobKind.Name(job.kind)[21:].lower()} job {job.id}")
        console.print(self.omactl("schedules", "show", schedule_id).rstrip())
        rpo = self.omactl("vms", "show", vm_id)
        console.print(
            "\n".join(line for line in rpo.splitlines() if line.strip().startswith(("rpo", "recovery", "next sync")))
        )
        return done[:count]

    def limited(self, appliance_id: str, vm_id: str) -> replication_pb2.ReplicationJob:
        """An incremental under a bandwidth limit of the appliance (omactl limits set), then the limit deleted. Its
        data rate cannot exceed the limit; the job's rate (its changed bytes over its whole time, snapshot
        included) is checked against twice the limit, which an unlimited copy on these machines runs far above."""
        limit_id = self.omactl("-q", "limits", "set", "--appliance", appliance_id, "--rate", f"{LIMIT_MIB}MiB")
        console.print(f"bandwidth limit {limit_id.strip()}: appliance {appliance_id} copies at most {LIMIT_MIB} MiB/s")
        job = self.replicate(vm_id, "incremental")
        self.omactl("limits", "delete", limit_id.strip())
        self.limits[job.id] = f"{LIMIT_MIB} MiB/s"
        seconds = job.finished_at.ToDatetime().timestamp() - job.started_at.ToDatetime().timestamp()
        rate = job.bytes_done / (1 << 20) / max(seconds, 1e-3)
        console.print(f"the limited incremental copied {job.bytes_done / (1 << 20):.1f} MiB at {rate:.1f} MiB/s")
        if rate > 2 * LIMIT_MIB:
            self.failures.append(f"the incremental ran at {rate:.0f} MiB/s under a {LIMIT_MIB} MiB/s limit")
        return job

    def source_disks(self, vm: vm_context_pb2.VmContext) -> dict[str, Path]:
        return {d.id: self.vcenter / vm.vm_uuid / f"disk-{d.key}.img" for d in vm.disks}

    def verify(self, vm_id: str, where: str, replica_of: dict[str, Path]) -> None:
        vm = self.vms.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id)).vm_context
        sources = self.source_disks(vm)
        for disk in vm.disks:
            ok = same_bytes(sources[disk.id], replica_of[disk.id])
            mark = "[green]identical" if ok else "[red]MISMATCH"
            console.print(f"  disk {disk.key} ({disk.capacity_bytes >> 20} MiB) vs {where}: {mark}")
            if not ok:
                self.failures.append(f"disk {disk.key} differs from its {where}")

    def replicas_in_cloudstack(self, vm_id: str) -> dict[str, Path]:
        volumes = self.volumes.ListVolumes(storage_pb2.ListVolumesRequest(vm_context_id=vm_id)).volumes
        return {v.disk_id: self.data_dir / "cloudstack" / "volumes" / f"{v.cloudstack_id}.img" for v in volumes}

    def guest_network_id(self) -> str:
        state = json.loads((self.data_dir / "cloudstack" / "cloudstack-sim.json").read_text())
        networks = state["networks"]
        for net in networks.values() if isinstance(networks, dict) else networks:
            if net["name"] == "guest-net-1":
                return str(net["id"])
        raise DemoFailed("the CloudStack simulator has no network guest-net-1")

    def summary(self, vm_id: str, jobs: list[replication_pb2.ReplicationJob]) -> None:
        vm = self.vms.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id)).vm_context
        keys = {d.id: d.key for d in vm.disks}
        table = Table(title="Replication summary", show_lines=False)
        columns = ["job", "disk", "mode", "copied", "job time", "throughput", "limit"]
        columns += ["from change id", "new change id"]
        for column in columns:
            table.add_column(column)
        for job in jobs:
            seconds = max(1e-3, job.finished_at.ToDatetime().timestamp() - job.started_at.ToDatetime().timestamp())
            for d in job.disks:
                kind = replication_pb2.ReplicationJobKind.Name(job.kind).removeprefix("REPLICATION_JOB_KIND_")
                mode = "full" if d.mode == 1 else "incremental"
                table.add_row(
                    kind.lower(),
                    str(keys[d.disk_id]),
                    mode,
                    f"{d.bytes_done / (1 << 20):.1f} MiB",
                    f"{seconds:.2f} s",
                    f"{d.bytes_done / (1 << 20) / seconds:.0f} MiB/s",
                    self.limits.get(job.id, "-"),
                    d.previous_change_id or "-",
                    d.new_change_id,
                )
        console.print(table)
        self.verification_summary(vm_id)

    def verification_summary(self, vm_id: str) -> None:
        """The OMA's digest of each replica at its current change id, against the source disk's digest computed
        here independently (ovirt-imageio's blkhash construction)."""
        deadline = time.monotonic() + 60
        vm = self.vms.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id)).vm_context
        while any(d.verification.change_id != d.last_change_id for d in vm.disks) and time.monotonic() < deadline:
            time.sleep(0.1)  # the read-back runs after the job, before the replicas leave the OMA VM
            vm = self.vms.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id)).vm_context
        sources = self.source_disks(vm)
        table = Table(title="Replica verification (read back by the OMA)", show_lines=False)
        for column in ("disk", "digest (OMA)", "verified change id", "blocks read", "compared", "source digest"):
            table.add_column(column)
        for d in vm.disks:
            v = d.verification
            if v.change_id != d.last_change_id:
                self.failures.append(f"disk {d.key} has no verified digest at its change id {d.last_change_id}")
            same = v.digest == blkhash(sources[d.id], v.block_size, v.algorithm, d.capacity_bytes)
            if not same:
                self.failures.append(f"the OMA's digest of disk {d.key} differs from its source's")
            table.add_row(
                str(d.key),
                f"{v.algorithm}:{v.digest[:16]}…",
                v.change_id or "-",
                f"{v.blocks_read} of {v.block_count}",
                f"{v.source_blocks_compared} with the agent's hashes",
                "[green]the same" if same else "[red]DIFFERENT",
            )
        console.print(table)


def main() -> int:
    started = time.monotonic()
    with workspace() as tmp, ExitStack() as stack:
        demo = Demo(Path(tmp), stack)
        try:
            demo.start_oma()
            appliance_id, vm_id = demo.start_agent()

            step("Initial replication (full copy of every disk)")
            initial = demo.replicate(vm_id, "initial")
            demo.verify(vm_id, "CloudStack volume", demo.replicas_in_cloudstack(vm_id))

            step(
                f"Guest writes {GUEST_WRITE_PERCENT}% of each disk, then incremental replication (changed blocks) "
                f"under a bandwidth limit of {LIMIT_MIB} MiB/s"
            )
            run(BIN / "vma-agent", "guest-write", "--vcenter-dir", demo.vcenter, "--vm", "demo-web",
                "--percent", str(GUEST_WRITE_PERCENT), "--seed", "7")  # fmt: skip
            incremental = demo.limited(appliance_id, vm_id)
            demo.verify(vm_id, "CloudStack volume", demo.replicas_in_cloudstack(vm_id))
            if incremental.bytes_done >= initial.bytes_done:
                demo.failures.append("the incremental run copied as much as the full one")

            step("A schedule: two incrementals start by themselves, seconds apart (guest writes before the first)")
            run(BIN / "vma-agent", "guest-write", "--vcenter-dir", demo.vcenter, "--vm", "demo-web",
                "--percent", "1", "--seed", "8")  # fmt: skip
            scheduled = demo.scheduled(vm_id)
            demo.verify(vm_id, "CloudStack volume", demo.replicas_in_cloudstack(vm_id))

            demo.test_failover_and_cleanup(vm_id)
            final = demo.cutover_and_complete(vm_id)

            step("Dashboard and /metrics: only for operators' tokens")
            demo.check_dashboard()

            step("Summary")
            demo.summary(vm_id, [initial, incremental, *scheduled, final])
        except (DemoFailed, grpc.RpcError) as exc:
            detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)  # type: ignore[union-attr]
            demo.failures.append(detail or type(exc).__name__)
            for name in ("oma-server", "vma-agent"):
                log = Path(tmp) / f"{name}.log"
                if log.exists():
                    console.print(f"[dim]--- last lines of {name}.log ---")
                    console.print("\n".join(log.read_text(errors="replace").splitlines()[-15:]), markup=False)
    elapsed = time.monotonic() - started
    if demo.failures:
        console.print(f"[bold red]demo FAILED after {elapsed:.0f}s:[/] " + "; ".join(demo.failures))
        return 1
    console.print(f"[bold green]demo OK[/] in {elapsed:.0f}s: every replica is byte-identical to its source disk")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    sys.exit(main())
