"""`python -m bench.replication`: whole replications through the real processes, against nbdcopy into the same export.

Real processes on 127.0.0.1, as `make demo` (oma_server.demo) runs them: oma-server (SQLite, in-process CloudStack
simulator, the supervised NBD server) and the reference VMA agent (`vma-agent run --report-interval 0.1`, default
copy options) whose "vCenter" is a directory of raw images (`vma-agent create-vm`: varied data with holes, about
58 % allocated). Each of --runs runs, on two new VMs (one disk of --size-mib; four disks of a quarter of it each):

1. **full copy** of the one-disk VM: `StartReplication(kind=INITIAL)`, polled until final. `full_s` = the job's
   finished_at - started_at; `copy_s` = the agent's own copy time of the disk (its log); `start_to_first_byte_ms`
   from StartReplication's return to the first WatchJob update with bytes_done > 0.
2. **the peer**: `nbdcopy --flush --target-is-zero <source image> <the job's NBD URI>` into the very export the job
   wrote (`--target-is-zero`: it skips the holes as the agent does on a new volume).
   `ratio_to_nbdcopy` = nbdcopy_s / copy_s (the same bytes of the same disk into the same export; the headline);
   `ratio_to_nbdcopy_job` = nbdcopy_s / full_s (the whole job: snapshot, planning and reports included).
   For context, a raw local read of the source image.
3. **incremental** after `vma-agent guest-write --percent P`: `incremental_ratio` = its job time / full_s.
4. **parallel disks**: a full copy of the four-disk VM; `parallel_disks_speedup` = full_s (one disk of the total
   size) / full_s (four disks).
5. **verification** (issue 15): the OMA reads each replica back (oma_server/integrity) as soon as its disk's sync
   completed and compares it with the source's hashes the agent sent, as `verify` steps of the job log; the bench
   waits for them. `verify_full_s` / `verify_incremental_s` = first start to last finish of those steps;
   `verify_mib_s` = capacity / verify_full_s; `verify_overhead_full`, `verify_overhead_incremental` and
   `verify_overhead_four_disks` = (the last step's finish - the job's finish) / the job's time: the time
   verification adds to the same sync without it (the sync itself does not wait for it; a disk's read-back that
   overlaps the job's other disks' copies adds nothing).

The page cache is dropped before every copy and read when the machine allows it (`caches_dropped` says whether it
did). Every replica is compared with its source byte for byte after every copy (the nbdcopy peer's too); a mismatch
fails the run. Medians over the runs; every run's figures are in the JSON (`runs_all`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc

from bench._common import (
    drop_caches,
    machine_info,
    nbdcopy_seconds,
    print_table,
    raw_read_seconds,
    write_json,
)
from oma.v1 import job_pb2, job_pb2_grpc, replication_pb2, vm_context_pb2
from oma_server.demo import BIN, Demo, DemoFailed, run, same_bytes
from oma_server.nbd import NbdExportManager
from oma_server.nbd.process import SERVER_NAME
from oma_server.ports import free_port

REPORT_INTERVAL_S = 0.1
FINAL = {
    replication_pb2.REPLICATION_JOB_STATUS_COMPLETED,
    replication_pb2.REPLICATION_JOB_STATUS_FAILED,
    replication_pb2.REPLICATION_JOB_STATUS_CANCELLED,
}
TARGETS = {
    "ratio_to_nbdcopy": (">=", 1.0),
    "parallel_disks_speedup": (">=", 1.5),
    "incremental_ratio": ("<=", 0.1),
    "start_to_first_byte_ms": ("<", 500.0),
    "verify_mib_s": (">=", 1e9 / (1 << 20)),  # 1 GB/s
    "verify_overhead_full": ("<=", 0.15),
    "verify_overhead_incremental": ("<=", 0.10),
}
MIB = 1 << 20
COPIED = re.compile(r"disk (\S+) copied \((full|incremental)\): (\d+) bytes in ([\d.]+) s")


def _ts(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9


class Bench(Demo):
    """The demo's processes; VMs added to the one appliance as the runs need them."""

    def connect(self) -> None:
        super().connect()
        self.watch = job_pb2_grpc.JobServiceStub(self.channel)

    def add_vm(self, appliance_id: str, name: str, disks_mib: tuple[int, ...]) -> vm_context_pb2.VmContext:
        sizes = [a for mib in disks_mib for a in ("--disk-mib", str(mib))]
        run(BIN / "vma-agent", "create-vm", "--vcenter-dir", self.vcenter, "--name", name, *sizes)
        found = self.vms.DiscoverVms(
            vm_context_pb2.DiscoverVmsRequest(appliance_id=appliance_id, name_filter=name, register=True)
        )
        return next(v for v in found.vm_contexts if v.name == name)

    def get_vm(self, vm_id: str) -> vm_context_pb2.VmContext:
        return self.vms.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id)).vm_context

    def timed_replication(
        self, vm_id: str, kind: replication_pb2.ReplicationJobKind
    ) -> tuple[replication_pb2.ReplicationJob, float | None]:
        """Start a replication over gRPC; return the final job and ms from StartReplication's return to first byte."""
        job = self.jobs.StartReplication(replication_pb2.StartReplicationRequest(vm_context_id=vm_id, kind=kind)).job
        returned = time.monotonic()
        first_byte: list[float] = []
        stream = self.watch.WatchJob(job_pb2.WatchJobRequest(job_id=job.id))

        def watch() -> None:
            try:
                for response in stream:
                    rj = response.update.replication_job
                    if rj.bytes_done > 0 and not first_byte:
                        first_byte.append(time.monotonic())
                        return
                    if rj.status in FINAL:
                        return
            except grpc.RpcError:
                pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        deadline = time.monotonic() + 3600
        while True:
            job = self.jobs.GetReplicationJob(replication_pb2.GetReplicationJobRequest(id=job.id)).job
            if job.status in FINAL:
                break
            if time.monotonic() > deadline:
                raise DemoFailed(f"job {job.id} did not finish in time")
            time.sleep(0.02)
        watcher.join(timeout=5)
        stream.cancel()
        if job.status != replication_pb2.REPLICATION_JOB_STATUS_COMPLETED:
            name = replication_pb2.ReplicationJobStatus.Name(job.status)
            raise DemoFailed(f"replication ended {name}: {job.error.reason} {job.error.message}")
        return job, (first_byte[0] - returned) * 1000 if first_byte else None

    def verification_seconds(self, job: replication_pb2.ReplicationJob, disks: int) -> tuple[float, float]:
        """Waits for the OMA's read-back of the job's replicas (its `verify` job-log steps, each from its disk's
        completion, all before the replicas leave the OMA VM); returns their span (first start to last finish) and
        the time they added after the job's end."""
        job_id = job.id
        deadline = time.monotonic() + 600
        while True:
            entries = self.watch.ListJobLogEntries(job_pb2.ListJobLogEntriesRequest(job_id=job_id, page_size=1000))
            steps = [e for e in entries.entries if e.step == "verify"]
            if len(steps) >= disks and all(e.status != job_pb2.JOB_LOG_STATUS_RUNNING for e in steps):
                break
            if time.monotonic() > deadline:
                raise DemoFailed(f"the replicas of job {job_id} were not verified in time")
            time.sleep(0.05)
        failed = [e.message for e in steps if e.status != job_pb2.JOB_LOG_STATUS_COMPLETED]
        if failed:
            raise DemoFailed(f"verification of job {job_id} failed: {failed[0]}")
        last = max(_ts(e.finished_at) for e in steps)
        return last - min(_ts(e.started_at) for e in steps), max(0.0, last - _ts(job.finished_at))

    def check_replicas(self, vm: vm_context_pb2.VmContext, what: str) -> None:
        sources = self.source_disks(vm)
        replicas = self.replicas_in_cloudstack(vm.id)  # replicas leave the OMA VM when their job ends
        for disk in vm.disks:
            if not same_bytes(sources[disk.id], replicas[disk.id]):
                raise DemoFailed(f"{what}: the replica of disk {disk.key} of {vm.name} differs from its source")


def job_seconds(job: replication_pb2.ReplicationJob) -> float:
    return max(1e-6, _ts(job.finished_at) - _ts(job.started_at))


def copy_seconds(log: Path, disk_id: str, mode: str) -> float | None:
    """The agent's own copy time of the last copy of `disk_id` in `mode` (from its log)."""
    found = None
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        m = COPIED.search(line)
        if m and m.group(1) == disk_id and m.group(2) == mode:
            found = float(m.group(4))
    return found


def peer_nbdcopy_seconds(config_dir: Path, source: Path, replica: Path) -> tuple[float, bool]:
    """nbdcopy into the job's replica volume through an nbdkit started as the OMA starts it (NbdExportManager): the
    job's own export is retired with its job (the volume leaves the OMA VM), so the same file, the same server and
    command line stand in for it. Returns the seconds and whether the page cache was dropped first."""

    async def peer() -> tuple[float, bool]:
        manager = NbdExportManager(config_dir, listen=f"127.0.0.1:{free_port()}")
        await manager.start()
        try:
            info = await manager.add_export("oma-vol-peer", str(replica))
            dropped = await asyncio.to_thread(drop_caches)
            return await asyncio.to_thread(nbdcopy_seconds, source, info.uri), dropped
        finally:
            await manager.stop()

    return asyncio.run(peer())


def one_run(bench: Bench, appliance_id: str, vm_id: str, index: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dropped = True
    vm1 = bench.get_vm(vm_id)
    quarter = args.size_mib // 4
    vm4 = bench.add_vm(appliance_id, "bench-4x", (quarter,) * 4)
    disk = vm1.disks[0]
    source = bench.source_disks(vm1)[disk.id]
    out["capacity_bytes"] = disk.capacity_bytes
    out["source_allocated_bytes"] = source.stat().st_blocks * 512

    print(f"  run {index + 1}: full copy of {vm1.name} ({args.size_mib} MiB)", flush=True)
    dropped &= drop_caches()
    full, first_byte = bench.timed_replication(vm1.id, replication_pb2.REPLICATION_JOB_KIND_INITIAL)
    out["verify_full_s"], out["verify_added_full_s"] = bench.verification_seconds(full, len(vm1.disks))
    bench.check_replicas(vm1, "full copy")
    out["full_s"] = job_seconds(full)
    out["copy_s"] = copy_seconds(bench.root / "vma-agent.log", disk.id, "full")
    out["full_bytes_done"] = full.bytes_done
    out["start_to_first_byte_ms"] = first_byte

    print(f"  run {index + 1}: nbdcopy of the source into the same export", flush=True)
    replica = bench.replicas_in_cloudstack(vm1.id)[disk.id]
    out["nbdcopy_s"], caches = peer_nbdcopy_seconds(bench.root / "peer-nbd", source, replica)
    dropped &= caches
    bench.check_replicas(vm1, "nbdcopy")
    dropped &= drop_caches()
    out["raw_read_s"] = raw_read_seconds(source)

    print(f"  run {index + 1}: guest writes {args.changed_percent} %, incremental", flush=True)
    run(BIN / "vma-agent", "guest-write", "--vcenter-dir", bench.vcenter, "--vm", vm1.name,
        "--percent", f"{args.changed_percent:g}", "--seed", str(7 + index))  # fmt: skip
    dropped &= drop_caches()
    incr, incr_first_byte = bench.timed_replication(vm1.id, replication_pb2.REPLICATION_JOB_KIND_INCREMENTAL)
    out["verify_incremental_s"], out["verify_added_incremental_s"] = bench.verification_seconds(incr, len(vm1.disks))
    checked = bench.get_vm(vm1.id).disks[0].verification
    out["verify_incremental_blocks_share"] = checked.blocks_read / max(1, checked.block_count)
    bench.check_replicas(vm1, "incremental")
    out["incremental_s"] = job_seconds(incr)
    out["incremental_bytes_done"] = incr.bytes_done
    out["incremental_start_to_first_byte_ms"] = incr_first_byte
    out["incremental_mode"] = "full" if any(d.mode == 1 for d in incr.disks) else "incremental"

    print(f"  run {index + 1}: full copy of {vm4.name} (4 x {quarter} MiB)", flush=True)
    dropped &= drop_caches()
    four, _ = bench.timed_replication(vm4.id, replication_pb2.REPLICATION_JOB_KIND_INITIAL)
    _, out["verify_added_four_disks_s"] = bench.verification_seconds(four, len(vm4.disks))
    bench.check_replicas(vm4, "four-disk full copy")
    out["four_disks_s"] = job_seconds(four)
    out["four_disks_bytes_done"] = four.bytes_done

    capacity = disk.capacity_bytes
    copy_s = out["copy_s"] or out["full_s"]
    out["ratio_to_nbdcopy"] = out["nbdcopy_s"] / copy_s
    out["ratio_to_nbdcopy_job"] = out["nbdcopy_s"] / out["full_s"]
    out["full_mib_s"] = capacity / MIB / copy_s
    out["full_job_mib_s"] = capacity / MIB / out["full_s"]
    out["nbdcopy_mib_s"] = capacity / MIB / out["nbdcopy_s"]
    out["raw_read_mib_s"] = capacity / MIB / out["raw_read_s"]
    out["incremental_ratio"] = out["incremental_s"] / out["full_s"]
    out["parallel_disks_speedup"] = out["full_s"] / out["four_disks_s"]
    # The sync without verification is the job itself (finished_at - started_at); the read-back runs after it.
    out["verify_mib_s"] = capacity / MIB / out["verify_full_s"]
    out["verify_to_raw_read"] = out["verify_mib_s"] / out["raw_read_mib_s"]
    out["verify_overhead_full"] = out["verify_added_full_s"] / out["full_s"]
    out["verify_overhead_incremental"] = out["verify_added_incremental_s"] / out["incremental_s"]
    out["verify_overhead_four_disks"] = out["verify_added_four_disks_s"] / out["four_disks_s"]
    out["caches_dropped"] = dropped
    return out


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "replication",
        "size_mib": args.size_mib,
        "changed_percent": args.changed_percent,
        "runs": args.runs,
        "report_interval_s": REPORT_INTERVAL_S,
        "nbd_server": f"{SERVER_NAME} ({_version()})",
        "machine": machine_info(),
    }
    runs: list[dict[str, Any]] = []
    run_root = root
    try:
        for i in range(args.runs):
            # A fresh OMA and appliance per run: five volumes a run, and one OMA VM takes at most 14 data disks.
            run_root = root / f"run-{i + 1}"
            run_root.mkdir()
            with ExitStack() as stack:
                bench = Bench(run_root, stack)
                bench.start_oma()
                appliance_id, vm_id = bench.start_agent(
                    "bench-1x", (args.size_mib,), ("--report-interval", str(REPORT_INTERVAL_S))
                )
                runs.append(one_run(bench, appliance_id, vm_id, i, args))
        out["runs_all"] = runs
        for key in runs[0]:
            values = [r[key] for r in runs if isinstance(r.get(key), int | float) and not isinstance(r[key], bool)]
            if values:
                out[key] = round(statistics.median(values), 3)
        out["caches_dropped"] = all(r["caches_dropped"] for r in runs)
        out["incremental_mode"] = runs[-1]["incremental_mode"]
        out["replicas_verified"] = True  # check_replicas raised otherwise
    except (DemoFailed, grpc.RpcError, subprocess.CalledProcessError) as exc:
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)  # type: ignore[union-attr]
        out["error"] = detail or type(exc).__name__
        out["runs_all"] = runs
        for name in ("oma-server", "vma-agent"):
            log = run_root / f"{name}.log"
            if log.exists():
                print(f"--- last lines of {name}.log ---", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
    return out


def _version() -> str:
    out = subprocess.run([SERVER_NAME, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def targets(out: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, (op, target) in TARGETS.items():
        value = out.get(key)
        ok = {">=": value is not None and value >= target, "<=": value is not None and value <= target}.get(
            op, value is not None and value < target
        )
        verdict = "n/a" if value is None else "PASS" if ok else "FAIL"
        rows.append((key, "-" if value is None else f"{value:g}", f"{op} {target:g}", verdict))
    return rows


def report(out: dict[str, Any]) -> None:
    def g(key: str, unit: str = "") -> str:
        value = out.get(key)
        if value is None:
            return "-"
        return f"{value:g}{unit}" if isinstance(value, float | int) and not isinstance(value, bool) else str(value)

    rows = [
        ("NBD server", g("nbd_server")),
        ("disk capacity / allocated", f"{g('size_mib')} MiB / {out.get('source_allocated_bytes', 0) / MIB:.0f} MiB"),
        ("raw local read of the source", g("raw_read_mib_s", " MiB/s")),
        ("nbdcopy into the same export", f"{g('nbdcopy_s', ' s')}, {g('nbdcopy_mib_s', ' MiB/s')}"),
        ("agent copy / whole job", f"{g('copy_s', ' s')} / {g('full_s', ' s')}; {g('full_mib_s', ' MiB/s')}"),
        ("ratio_to_nbdcopy (copy; job)", f"{g('ratio_to_nbdcopy')}; {g('ratio_to_nbdcopy_job')}"),
        (
            f"incremental ({g('changed_percent')} % written)",
            f"{g('incremental_s', ' s')}, {out.get('incremental_bytes_done', 0) / MIB:.0f} MiB, "
            f"{g('incremental_mode')}",
        ),
        ("incremental_ratio (incr / full job)", g("incremental_ratio")),
        ("four disks of a quarter each (job)", g("four_disks_s", " s")),
        ("parallel_disks_speedup", g("parallel_disks_speedup")),
        (
            "OMA read-back after the full / incremental",
            f"{g('verify_full_s', ' s')} / {g('verify_incremental_s', ' s')}",
        ),
        ("verify_mib_s (capacity read back / s); to the raw read", f"{g('verify_mib_s')}; {g('verify_to_raw_read')}"),
        ("blocks the incremental's read-back read (share)", g("verify_incremental_blocks_share")),
        (
            "verify_overhead_full; _incremental; _four_disks",
            f"{g('verify_overhead_full')}; {g('verify_overhead_incremental')}; {g('verify_overhead_four_disks')}",
        ),
        (
            "start_to_first_byte_ms (full / incr)",
            f"{g('start_to_first_byte_ms')} / {g('incremental_start_to_first_byte_ms')}",
        ),
        ("caches dropped / replicas identical", f"{g('caches_dropped')} / {g('replicas_verified')}"),
    ]
    print()
    print_table(rows, ["figure", f"median of {out['runs']}"], title="Replication benchmark")
    print()
    print_table(targets(out), ["target", "measured", "wanted", "verdict"], title="Targets")
    if "error" in out:
        print(f"\nERROR: {out['error']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=2048, help="size of the one-disk VM's disk (default 2048)")
    p.add_argument("--changed-percent", type=float, default=5.0, help="guest writes before the incremental (5)")
    p.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default 3)")
    p.add_argument("--json", default="", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--quick", action="store_true", help="smoke run: a 256 MiB disk, one run")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server and agent logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mib, args.runs = min(args.size_mib, 256), 1
    if shutil.which("nbdcopy") is None:
        p.error("nbdcopy is required (apt-get install libnbd-bin)")
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="bench-replication-"))
    try:
        out = measure(args, root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    out["total_s"] = round(time.monotonic() - started, 1)
    report(out)
    if args.json:
        write_json(args.json, out)
        print(f"wrote {args.json}")
    return 1 if "error" in out else 0


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    sys.exit(main())
