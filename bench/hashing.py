"""Block hashing and replica read-back: which hash and block size, and how fast the OMA verifies a replica.

    python -m bench.hashing [--size-mib 1024] [--runs 3] [--json FILE]

1. Per-core hash rate (one thread, random data, best of `--runs`) of hashlib's SHA-256 and BLAKE2b-256 (and the
   `blake3` package when it is installed) over 1, 2 and 4 MiB blocks: the choice in oma_server/integrity/blocks.py.
2. The OMA's read-back (`ReplicaReader`, every block of a sparse disk image) against the raw sequential read of the
   same file in the same run, from a dropped page cache (root) and from a warm one: `verify_mib_s` and its ratio to
   the read.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import MIB, drop_caches, machine_info, make_source, print_table, raw_read_seconds, write_json
from oma_server.integrity.blocks import BLOCK_SIZE, all_blocks, disk_digest
from oma_server.integrity.reader import ReplicaReader, default_workers


def hash_functions() -> dict[str, Callable[[bytes | memoryview], bytes]]:
    found: dict[str, Callable[[bytes | memoryview], bytes]] = {
        "sha256": lambda b: hashlib.sha256(b).digest(),
        "blake2b-256": lambda b: hashlib.blake2b(b, digest_size=32).digest(),
    }
    try:
        import blake3  # type: ignore[import-not-found]

        found["blake3"] = lambda b: blake3.blake3(b).digest()
    except ImportError:
        pass
    return found


def hash_rates(runs: int) -> list[dict[str, Any]]:
    data = os.urandom(64 * MIB)
    view = memoryview(data)
    rows = []
    for name, fn in hash_functions().items():
        row: dict[str, Any] = {"hash": name}
        for block in (1 * MIB, 2 * MIB, 4 * MIB):
            best = 0.0
            for _ in range(runs):
                started = time.perf_counter()
                for offset in range(0, len(data), block):
                    fn(view[offset : offset + block])
                best = max(best, len(data) / MIB / (time.perf_counter() - started))
            row[f"{block // MIB} MiB blocks (MiB/s)"] = round(best)
        rows.append(row)
    return rows


def read_back(path: Path, size: int, runs: int, cold: bool) -> dict[str, Any]:
    verify, raw = [], []
    digest = ""
    for _ in range(runs):
        if cold:
            drop_caches()
        raw.append(raw_read_seconds(path))
        if cold:
            drop_caches()
        started = time.perf_counter()
        hashes = ReplicaReader(str(path), size).hashes(all_blocks(size))
        verify.append(time.perf_counter() - started)
        digest = disk_digest(b"".join(hashes[i] for i in range(len(hashes))))
    v, r = statistics.median(verify), statistics.median(raw)
    return {
        "cache": "dropped" if cold else "warm",
        "verify_mib_s": round(size / MIB / v),
        "raw_read_mib_s": round(size / MIB / r),
        "verify_to_raw_read": round(r / v, 2),
        "digest": digest[:16],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hashing", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="disk image size (default 1024)")
    parser.add_argument("--allocated", type=float, default=0.6, help="allocated fraction (default 0.6)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--json", help="write the result as JSON to this file")
    args = parser.parse_args(argv)
    rates = hash_rates(args.runs)
    print_table(rates, title="Per-core hash rate (one thread)")
    with tempfile.TemporaryDirectory(prefix="bench-hashing-") as work:
        src = Path(work) / "disk.img"
        size = args.size_mib * MIB
        make_source(src, size, args.allocated, seed=15)
        can_drop = drop_caches()
        reads = [read_back(src, size, args.runs, cold) for cold in ([True] if can_drop else []) + [False]]
    print()
    print_table(
        reads,
        title=f"Read-back of a {args.size_mib} MiB image ({default_workers()} workers, {BLOCK_SIZE // MIB} MiB blocks)",
    )
    result = {"machine": machine_info(), "hash_rates": rates, "read_back": reads, "block_size": BLOCK_SIZE}
    result["verify_mib_s"] = reads[0]["verify_mib_s"]
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
