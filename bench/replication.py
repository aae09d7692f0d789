"""`python -m bench.replication`: full and incremental replication of one disk, against nbdcopy (issue 6, point 6).

Real processes on 127.0.0.1, as `make demo` (oma_server.demo) runs them: oma-server (SQLite, in-process CloudStack
simulator, real nbd-server) and the reference VMA agent (`vma-agent run --report-interval 0.1`) whose "vCenter" is a
directory of raw images. One VM with ONE disk of --size-mib (varied data with holes, `vma-agent create-vm`).

1. baseline: `nbdcopy <source image> <local file>` of the same image, timed;
2. full copy: ReplicationService.StartReplication(kind=INITIAL), GetReplicationJob polled until it is final;
   `full_s` = finished_at - started_at of the job (the appliance's copy), a JobService.WatchJob stream opened when
   StartReplication returns gives `start_to_first_byte_ms` (first update with bytes_done > 0);
3. `vma-agent guest-write --percent P`, then an incremental replication, timed the same way.

`ratio_to_nbdcopy` = (capacity / full_s) / (capacity / nbdcopy_s): the same numerator (the disk's capacity) for both,
so it is nbdcopy_s / full_s. Targets (reported, never fatal): ratio >= 0.7, incremental <= 15 % of full,
start-to-first-byte < 1 s. The agent's log splits each job's time into its snapshot step (accepted -> snapshot
taken) and the disk copy itself (`agent_*_snapshot_s`, `agent_*_copy_s`, and the copy-only ratios).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from bench._common import machine_info, print_table, write_json
from oma.v1 import (
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    vm_context_pb2,
)
from oma_server.demo import BIN, Demo, DemoFailed, run, same_bytes

VM_NAME = "bench-vm"
REPORT_INTERVAL_S = 0.1
FINAL = {
    replication_pb2.REPLICATION_JOB_STATUS_COMPLETED,
    replication_pb2.REPLICATION_JOB_STATUS_FAILED,
    replication_pb2.REPLICATION_JOB_STATUS_CANCELLED,
}
TARGETS = {"ratio_to_nbdcopy": 0.7, "incremental_ratio": 0.15, "start_to_first_byte_ms": 1000.0}
MIB = 1 << 20


def _ts(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9


class Bench(Demo):
    """The demo's processes, with one disk of the asked size and a short progress report interval."""

    def __init__(self, root: Path, stack: ExitStack, size_mib: int) -> None:
        super().__init__(root, stack)
        self.size_mib = size_mib
        self.watch = job_pb2_grpc.JobServiceStub(self.channel)

    def timed_replication(self, vm_id: str, kind: int) -> tuple[replication_pb2.ReplicationJob, float | None]:
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
            time.sleep(0.05)
        watcher.join(timeout=5)
        stream.cancel()
        if job.status != replication_pb2.REPLICATION_JOB_STATUS_COMPLETED:
            name = replication_pb2.ReplicationJobStatus.Name(job.status)
            raise DemoFailed(f"replication ended {name}: {job.error.reason} {job.error.message}")
        return job, (first_byte[0] - returned) * 1000 if first_byte else None


COPIED = re.compile(r"copied \((full|incremental)\): (\d+) bytes in ([\d.]+) s")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)")


def agent_phases(log: Path) -> list[dict[str, float]]:
    """Per job, from the agent's log: seconds from accepting the job to the snapshot, and the disk copy itself."""
    jobs: list[dict[str, float]] = []
    accepted = 0.0
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        stamp = STAMP.match(line)
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp() if stamp else 0.0
        if " accepted job " in line:
            accepted = at
            jobs.append({})
        elif jobs and " snapshot " in line and line.rstrip().endswith(" taken"):
            jobs[-1]["snapshot_s"] = round(at - accepted, 3)
        elif jobs and (copied := COPIED.search(line)):
            jobs[-1]["copy_s"] = float(copied.group(3))
    return jobs


def job_seconds(job: replication_pb2.ReplicationJob) -> float:
    return max(1e-6, _ts(job.finished_at) - _ts(job.started_at))


def nbdcopy_seconds(source: Path, target: Path) -> float:
    target.unlink(missing_ok=True)
    started = time.monotonic()
    subprocess.run(["nbdcopy", str(source), str(target)], check=True, timeout=3600)
    seconds = time.monotonic() - started
    target.unlink(missing_ok=True)
    return seconds


def measure(args: argparse.Namespace, root: Path, stack: ExitStack) -> dict[str, Any]:
    bench = Bench(root, stack, args.size_mib)
    out: dict[str, Any] = {
        "benchmark": "replication",
        "size_mib": args.size_mib,
        "changed_percent": args.changed_percent,
        "report_interval_s": REPORT_INTERVAL_S,
        "machine": machine_info(),
    }
    try:
        bench.start_oma()
        _, vm_id = bench.start_agent(VM_NAME, (bench.size_mib,), ("--report-interval", str(REPORT_INTERVAL_S)))
        vm = bench.vms.GetVmContext(vm_context_pb2.GetVmContextRequest(id=vm_id)).vm_context
        disk = vm.disks[0]
        source = bench.source_disks(vm)[disk.id]
        capacity = disk.capacity_bytes
        out["capacity_bytes"] = capacity
        out["source_allocated_bytes"] = source.stat().st_blocks * 512

        print(f"[1/3] baseline: nbdcopy {source.name} -> local file ({capacity / MIB:.0f} MiB)", flush=True)
        nbdcopy_s = nbdcopy_seconds(source, root / "nbdcopy-target.img")
        out["nbdcopy_s"] = round(nbdcopy_s, 3)
        out["nbdcopy_local_mib_s"] = round(capacity / MIB / nbdcopy_s, 1)

        print("[2/3] full copy (StartReplication kind=INITIAL)", flush=True)
        full, full_fb = bench.timed_replication(vm_id, replication_pb2.REPLICATION_JOB_KIND_INITIAL)
        full_s = job_seconds(full)
        replicas = bench.replicas_in_cloudstack(vm_id)
        out["full_s"] = round(full_s, 3)
        out["full_bytes_done"] = full.bytes_done
        out["full_mib_s"] = round(full.bytes_done / MIB / full_s, 1)
        out["full_capacity_mib_s"] = round(capacity / MIB / full_s, 1)
        out["ratio_to_nbdcopy"] = round(nbdcopy_s / full_s, 3)
        out["ratio_to_nbdcopy_job_bytes"] = round((full.bytes_done / full_s) / (capacity / nbdcopy_s), 3)
        out["full_verified"] = same_bytes(source, replicas[disk.id])

        print(f"[3/3] guest writes {args.changed_percent} %, then incremental", flush=True)
        run(BIN / "vma-agent", "guest-write", "--vcenter-dir", bench.vcenter, "--vm", VM_NAME,
            "--percent", f"{args.changed_percent:g}", "--seed", "7")  # fmt: skip
        incr, incr_fb = bench.timed_replication(vm_id, replication_pb2.REPLICATION_JOB_KIND_INCREMENTAL)
        incremental_s = job_seconds(incr)
        out["incremental_s"] = round(incremental_s, 3)
        out["incremental_bytes_done"] = incr.bytes_done
        out["incremental_mode"] = "full" if any(d.mode == 1 for d in incr.disks) else "incremental"
        out["incremental_ratio"] = round(incremental_s / full_s, 3)
        out["incremental_verified"] = same_bytes(source, bench.replicas_in_cloudstack(vm_id)[disk.id])

        phases = agent_phases(root / "vma-agent.log")
        for name, phase in zip(("full", "incremental"), phases, strict=False):
            out[f"agent_{name}_snapshot_s"] = phase.get("snapshot_s")
            out[f"agent_{name}_copy_s"] = phase.get("copy_s")
        if out.get("agent_full_copy_s") and out.get("agent_incremental_copy_s"):
            out["agent_copy_incremental_ratio"] = round(out["agent_incremental_copy_s"] / out["agent_full_copy_s"], 3)
            out["agent_copy_ratio_to_nbdcopy"] = round(nbdcopy_s / out["agent_full_copy_s"], 3)
        out["start_to_first_byte_ms"] = round(full_fb, 1) if full_fb is not None else None
        out["incremental_start_to_first_byte_ms"] = round(incr_fb, 1) if incr_fb is not None else None
        out["start_to_first_byte_note"] = (
            "StartReplication returned -> first WatchJob update with bytes_done > 0 (full copy); includes "
            f"provisioning the volume and NBD export on the simulator and one agent report interval "
            f"({REPORT_INTERVAL_S} s)"
        )
        out["ratio_to_nbdcopy_note"] = (
            "(capacity / full_s) / (capacity / nbdcopy_s); ratio_to_nbdcopy_job_bytes uses the job's bytes_done "
            "for the replication side instead"
        )
    except (DemoFailed, grpc.RpcError, subprocess.CalledProcessError) as exc:
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)  # type: ignore[union-attr]
        out["error"] = detail or type(exc).__name__
        for name in ("oma-server", "vma-agent"):
            log = root / f"{name}.log"
            if log.exists():
                print(f"--- last lines of {name}.log ---", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
    return out


def targets(out: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    checks = (
        ("ratio_to_nbdcopy", ">=", lambda v, t: v >= t),
        ("incremental_ratio", "<=", lambda v, t: v <= t),
        ("start_to_first_byte_ms", "<", lambda v, t: v < t),
    )
    for key, op, ok in checks:
        value = out.get(key)
        target = TARGETS[key]
        verdict = "n/a" if value is None else "PASS" if ok(value, target) else "FAIL"
        rows.append((key, "-" if value is None else f"{value:g}", f"{op} {target:g}", verdict))
    return rows


def report(out: dict[str, Any]) -> None:
    def g(key: str, unit: str = "") -> str:
        value = out.get(key)
        if value is None:
            return "-"
        return f"{value:g}{unit}" if isinstance(value, float | int) and not isinstance(value, bool) else str(value)

    rows = [
        ("disk capacity / allocated", f"{g('size_mib')} MiB / {out.get('source_allocated_bytes', 0) / MIB:.0f} MiB"),
        ("nbdcopy -> local file", f"{g('nbdcopy_s', ' s')}, {g('nbdcopy_local_mib_s', ' MiB/s')} (capacity)"),
        ("full copy (job time)", f"{g('full_s', ' s')}, {out.get('full_bytes_done', 0) / MIB:.0f} MiB copied"),
        ("full MiB/s (job bytes / capacity)", f"{g('full_mib_s')} / {g('full_capacity_mib_s')}"),
        ("ratio_to_nbdcopy (capacity / job bytes)", f"{g('ratio_to_nbdcopy')} / {g('ratio_to_nbdcopy_job_bytes')}"),
        (
            f"incremental ({g('changed_percent')} % written)",
            f"{g('incremental_s', ' s')}, {out.get('incremental_bytes_done', 0) / MIB:.0f} MiB copied, "
            f"mode {g('incremental_mode')}",
        ),
        ("incremental_ratio (incr / full)", g("incremental_ratio")),
        (
            "start_to_first_byte_ms (full / incr)",
            f"{g('start_to_first_byte_ms')} / {g('incremental_start_to_first_byte_ms')}",
        ),
        (
            "agent log: snapshot / copy s (full; incr)",
            f"{g('agent_full_snapshot_s')} / {g('agent_full_copy_s')}; "
            f"{g('agent_incremental_snapshot_s')} / {g('agent_incremental_copy_s')}",
        ),
        (
            "copy only: ratio_to_nbdcopy / incr ratio",
            f"{g('agent_copy_ratio_to_nbdcopy')} / {g('agent_copy_incremental_ratio')}",
        ),
        ("replica byte-identical (full / incr)", f"{g('full_verified')} / {g('incremental_verified')}"),
    ]
    print()
    print_table(rows, ["figure", "measured"], title="Replication benchmark")
    print()
    print_table(targets(out), ["target", "measured", "wanted", "verdict"], title="Targets")
    print("\nstart_to_first_byte includes provisioning the volume and NBD export on the simulator and one agent")
    print(f"report interval ({REPORT_INTERVAL_S} s). ratio_to_nbdcopy = (capacity/full_s) / (capacity/nbdcopy_s).")
    if "error" in out:
        print(f"\nERROR: {out['error']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=2048, help="size of the VM's one disk (default 2048)")
    p.add_argument("--changed-percent", type=float, default=5.0, help="guest writes before the incremental (5)")
    p.add_argument("--json", default="", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--quick", action="store_true", help="smoke run: a 256 MiB disk")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server and agent logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mib = min(args.size_mib, 256)
    if shutil.which("nbdcopy") is None:
        p.error("nbdcopy is required (apt-get install libnbd-bin)")
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="bench-replication-"))
    try:
        with ExitStack() as stack:
            out = measure(args, root, stack)
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
    return 0


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    sys.exit(main())
