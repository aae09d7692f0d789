"""NBD benchmark: write throughput through an export vs locally, and add/remove latency with live exports.

    python -m bench.nbd [--size-mib 1024] [--live 50] [--iterations 20] [--runs 3] [--json FILE] [--dir DIR]

1. Throughput: a source file of varied (non-zero, incompressible and text-like) data is copied with
   `nbdcopy --flush` (a) into a sparse file of the same size locally and (b) through an export of the real
   nbd-server (driven by NbdExportManager) into another sparse file on the same filesystem. Best of `--runs`.
2. Latency: with `--live` exports live, `--iterations` times add one export and remove it again.
   `add_ms` / `remove_ms` is the time until the manager call returns (config written, nbd-server restarted and
   listening: connections made from then on are accepted and served). `add_served_ms` is until `nbdinfo`,
   started right after add returns, has opened the new export (it waits in the listen backlog while the new
   nbd-server generates its GnuTLS DH parameters); `remove_served_ms` is until a real NBD handshake
   (NBD_OPT_LIST) no longer lists the removed export.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loguru import logger

from bench._common import free_port, machine_info, percentile, print_table, write_json
from oma_server.nbd import NbdExportManager
from oma_server.nbd.probe import list_exports

MiB = 1 << 20


def make_source(path: Path, size: int) -> None:
    """Varied data without zero blocks: random bytes interleaved with text-like runs (blocking)."""
    rng = random.Random(20240601)
    words = [b"vmware", b"cloudstack", b"volume", b"block", b"sector", b"ext4", b"ntfs", b"journal"]
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(MiB, size - written)
            if rng.random() < 0.7:
                chunk = rng.randbytes(n)
            else:
                text = b" ".join(rng.choice(words) for _ in range(n // 6 + 1))
                chunk = text[:n]
            f.write(chunk)
            written += n


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


async def timed_nbdcopy(src: str, dst: str) -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "nbdcopy", "--flush", src, dst, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"nbdcopy {src} -> {dst} failed: {err.decode()}")
    return time.perf_counter() - t0


async def same_content(a: Path, b: Path) -> bool:
    def cmp() -> bool:
        return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0

    return await asyncio.to_thread(cmp)


async def bench_throughput(work: Path, size_mib: int, runs: int) -> dict[str, Any]:
    size = size_mib * MiB
    src = work / "source.img"
    await asyncio.to_thread(make_source, src, size)
    local_times, export_times = [], []
    mgr = NbdExportManager(work / "nbd-tp", listen=f"127.0.0.1:{free_port()}", probe_interval_s=5.0)
    await mgr.start()
    try:
        for run in range(runs):
            local = await asyncio.to_thread(sparse_file, work / "local.img", size)
            local_times.append(await timed_nbdcopy(str(src), str(local)))
            backing = await asyncio.to_thread(sparse_file, work / "export.img", size)
            info = await mgr.add_export("oma-vol-bench", str(backing))
            await mgr.wait_ready()
            export_times.append(await timed_nbdcopy(str(src), info.uri))
            await mgr.remove_export("oma-vol-bench")
            if run == 0 and not (await same_content(src, backing) and await same_content(src, local)):
                raise RuntimeError("copied data differs from the source")
            for p in (local, backing):
                p.unlink()
    finally:
        await mgr.stop(disconnect_clients=True)
        src.unlink(missing_ok=True)
    local_best, export_best = min(local_times), min(export_times)
    return {
        "size_mib": size_mib,
        "runs": runs,
        "local_write_mib_s": size_mib / local_best,
        "export_write_mib_s": size_mib / export_best,
        "ratio_to_local": local_best / export_best,
        "local_write_s_all": local_times,
        "export_write_s_all": export_times,
    }


async def wait_listed(mgr: NbdExportManager, name: str, present: bool, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            names = await list_exports(mgr.host, mgr.port, timeout=2.0)
        except Exception:
            names = None
        if names is not None and (name in names) == present:
            return
        await asyncio.sleep(0.002)
    raise RuntimeError(f"export {name} {'never appeared' if present else 'never disappeared'}")


async def client_sees(uri: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "nbdinfo", "--size", uri, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"nbdinfo {uri} failed right after add: {err.decode()}")


async def bench_latency(work: Path, live: int, iterations: int) -> dict[str, Any]:
    disks = work / "disks"
    disks.mkdir()
    desired = {f"oma-vol-live{i:03d}": str(sparse_file(disks / f"live{i}.img", 64 * MiB)) for i in range(live)}
    mgr = NbdExportManager(work / "nbd-lat", listen=f"127.0.0.1:{free_port()}", probe_interval_s=5.0)
    await mgr.start(desired=desired)
    await mgr.wait_ready(timeout=30)
    add, remove, add_served, remove_served = [], [], [], []
    try:
        for i in range(iterations):
            name = f"oma-vol-extra{i:03d}"
            path = str(sparse_file(disks / f"extra{i}.img", 64 * MiB))
            t0 = time.perf_counter()
            await mgr.add_export(name, path)
            add.append((time.perf_counter() - t0) * 1000)
            # A real client connecting right away: it waits in the listen backlog until the new
            # nbd-server has initialised, then must see the export.
            await client_sees(mgr.uri_for(name))
            add_served.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            await mgr.remove_export(name)
            remove.append((time.perf_counter() - t0) * 1000)
            await wait_listed(mgr, name, False)
            remove_served.append((time.perf_counter() - t0) * 1000)
        assert len(mgr.list_exports()) == live
    finally:
        await mgr.stop(disconnect_clients=True)
    out: dict[str, Any] = {"live_exports": live, "iterations": iterations}
    for key, values in (
        ("add_ms", add),
        ("remove_ms", remove),
        ("add_served_ms", add_served),
        ("remove_served_ms", remove_served),
    ):
        out[f"{key}_p50"] = percentile(values, 50)
        out[f"{key}_p99"] = percentile(values, 99)
        out[f"{key}_max"] = max(values)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.dir) if args.dir else None
    work = Path(tempfile.mkdtemp(prefix="bench-nbd-", dir=base))
    try:
        tp = await bench_throughput(work, args.size_mib, args.runs)
        lat = await bench_latency(work, args.live, args.iterations)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    nbd_version = await asyncio.to_thread(
        subprocess.run, ["nbd-server", "-V"], capture_output=True, text=True, check=False
    )
    version = (nbd_version.stdout + nbd_version.stderr).strip().splitlines()
    return {
        **tp,
        **lat,
        "targets": {"ratio_to_local": ">= 0.8", "add_ms_p50": "< 200", "remove_ms_p50": "< 200"},
        "nbd_server_version": version[0] if version else "",
        "machine": machine_info(),
        "workdir_fs": str(base or tempfile.gettempdir()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nbd", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="data written per copy (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="copies per side; the best counts (default 3)")
    parser.add_argument("--live", type=int, default=50, help="exports live during add/remove (default 50)")
    parser.add_argument("--iterations", type=int, default=20, help="add/remove cycles (default 20)")
    parser.add_argument("--dir", help="work directory (default: the system temp dir)")
    parser.add_argument("--json", help="write the result as JSON to this file")
    args = parser.parse_args(argv)
    for tool in ("nbd-server", "nbdcopy", "cmp"):
        if shutil.which(tool) is None:
            print(f"bench.nbd needs {tool}; install nbd-server and libnbd-bin", file=sys.stderr)
            return 2
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    result = asyncio.run(main_async(args))
    print_table(
        [
            {"metric": "local nbdcopy write (MiB/s)", "value": result["local_write_mib_s"], "target": ""},
            {"metric": "export nbdcopy write (MiB/s)", "value": result["export_write_mib_s"], "target": ""},
            {"metric": "ratio export/local", "value": result["ratio_to_local"], "target": ">= 0.8"},
            {
                "metric": f"add p50 (ms, {result['live_exports']} live)",
                "value": result["add_ms_p50"],
                "target": "< 200",
            },
            {"metric": "add p99 (ms)", "value": result["add_ms_p99"], "target": ""},
            {"metric": "add until a client sees it p50 (ms)", "value": result["add_served_ms_p50"], "target": ""},
            {"metric": "remove p50 (ms)", "value": result["remove_ms_p50"], "target": "< 200"},
            {"metric": "remove p99 (ms)", "value": result["remove_ms_p99"], "target": ""},
            {"metric": "remove until served p50 (ms)", "value": result["remove_served_ms_p50"], "target": ""},
        ],
        title=f"bench.nbd: {result['size_mib']} MiB, best of {result['runs']}; {result['nbd_server_version']}",
    )
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
