"""`python -m bench.first_byte`: how soon the reference agent's copier has its first byte acknowledged.

The copier (vma_client_stubs/agent/copier.py) is started on a cold cache against an export of the OMA's own nbdkit
(NbdExportManager); its progress is read every 2 ms from another thread, as the agent does: `first_byte_ms` is the
time from `run()` until `bytes_done` > 0, i.e. until the first write's reply was taken in — what the agent can
report to the OMA. The ceiling, measured in the same run on the same cold cache: one connection, one read of the
first chunk, one synchronous write of it (`ceiling_ms`: nothing can acknowledge a byte sooner). Progress counts
only completed writes; before the copier took in replies after each request it read them only when its window of
requests was full, so the first byte waited for 8 chunks per connection (README, data path).

    python -m bench.first_byte [--size-mib 512] [--runs 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import drop_caches, machine_info, make_source, print_table, same_file_bytes, write_json
from oma_server.nbd import NbdExportManager
from oma_server.ports import free_port
from vma_client_stubs.agent.copier import DEFAULT_CHUNK, DiskCopier, Plan
from vma_client_stubs.agent.extents import allocated_extents

MIB = 1 << 20


def copier_first_byte(source: Path, uri: str) -> tuple[float, float]:
    """(ms to the first acknowledged byte, ms for the whole copy) of one cold copy."""
    plan = Plan.full(allocated_extents(source), source.stat().st_size, fresh_target=True)
    copier = DiskCopier(source, uri, plan, fresh_target=True)
    started = time.monotonic()
    worker = threading.Thread(target=copier.run)
    worker.start()
    first: float | None = None
    while worker.is_alive():
        if first is None and copier.progress().bytes_done > 0:
            first = time.monotonic()
        time.sleep(0.002)
    ended = time.monotonic()
    return 1000 * ((first or ended) - started), 1000 * (ended - started)


def ceiling(source: Path, uri: str) -> float:
    """ms for a new connection, one read of the first data chunk and one synchronous write of it."""
    import nbd  # Debian python3-libnbd

    offset = allocated_extents(source)[0][0]
    started = time.monotonic()
    handle = nbd.NBD()
    handle.connect_uri(uri)
    fd = os.open(source, os.O_RDONLY)
    try:
        data = os.pread(fd, DEFAULT_CHUNK, offset)
    finally:
        os.close(fd)
    handle.pwrite(data, offset)
    elapsed = 1000 * (time.monotonic() - started)
    handle.shutdown()
    return elapsed


async def measure(root: Path, size: int, runs: int) -> dict[str, Any]:
    source = root / "source.img"
    make_source(source, size, allocated=0.6, seed=7)
    manager = NbdExportManager(root / "nbd", listen=f"127.0.0.1:{free_port()}")
    await manager.start()
    try:
        firsts, totals, ceilings, dropped = [], [], [], True
        for run in range(runs):
            target = root / f"target-{run}.img"
            target.touch()
            os.truncate(target, size)
            await manager.add_export(f"oma-vol-fb{run}", str(target))
            uri = manager.uri_for(f"oma-vol-fb{run}")
            dropped = drop_caches() and dropped
            ceilings.append(await asyncio.to_thread(ceiling, source, uri))
            dropped = drop_caches() and dropped
            first, total = await asyncio.to_thread(copier_first_byte, source, uri)
            firsts.append(first)
            totals.append(total)
            if not same_file_bytes(source, target):
                raise SystemExit(f"run {run}: the replica differs from its source")
            await manager.remove_export(f"oma-vol-fb{run}")
            target.unlink()
    finally:
        await manager.stop()
    first_ms, ceiling_ms = statistics.median(firsts), statistics.median(ceilings)
    return {
        "machine": machine_info(),
        "size_mib": size // MIB,
        "runs": runs,
        "caches_dropped": dropped,
        "first_byte_ms": round(first_ms, 1),
        "first_byte_ms_runs": [round(v, 1) for v in firsts],
        "copy_ms": round(statistics.median(totals), 1),
        "ceiling_ms": round(ceiling_ms, 1),
        "ceiling_ms_runs": [round(v, 1) for v in ceilings],
        "ratio_to_ceiling": round(first_ms / ceiling_ms, 2) if ceiling_ms else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.first_byte", description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--runs", type=int, default=5, help="runs; medians are reported (default 5)")
    p.add_argument("--json", help="write the figures as JSON")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-first-byte-") as tmp:
        result = asyncio.run(measure(Path(tmp), args.size_mib * MIB, args.runs))
    print_table(
        [
            (
                "first_byte_ms (runs)",
                f"{result['first_byte_ms']} ({', '.join(map(str, result['first_byte_ms_runs']))})",
            ),
            ("ceiling_ms: connect + read + write one chunk", f"{result['ceiling_ms']}"),
            ("ratio_to_ceiling", result["ratio_to_ceiling"]),
            ("whole copy ms", result["copy_ms"]),
            ("caches dropped", result["caches_dropped"]),
        ],
        ["figure", "value"],
        title="Copier: first acknowledged byte (cold cache, medians)",
    )
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
