"""`python -m bench.progress --processes N`: the progress benchmark over several OMA processes on one PostgreSQL.

Two measured runs, one after the other, with the same offered load per process (`--streams` VMAs at `--rate`):

1. **one process**: `--streams` VMAs stream to one `oma-server`; the watchers watch on that process;
2. **N processes**: N x `--streams` VMAs, spread round-robin over N `oma-server` processes on the same database; the
   watchers watch on process 0, so most of what they see was applied by another process and reached them through
   the database (cluster/changes.py: the flush's NOTIFY, then a read of the job).

`scale_ratio` = reports/s applied with N processes / with 1 (same load per process: 2.0 would be perfect scaling);
`p99_watch_ms` is over every change the watchers saw, `p99_watch_cross_ms` over the changes of streams held by
another process than the watchers'. `pg_cpu_pct` is the CPU of every `postgres` process on this machine over the
run (so run it with a PostgreSQL of its own: without `--database` one is started in a temp dir). Each run seeds
its own fresh jobs. Everything runs on this machine: the VMAs, the processes, PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import progress as bp
from oma_server.ports import free_port


def postgres_cpu_seconds() -> float:
    """CPU seconds of every `postgres` process on this machine (the server and its backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    total += bp.cpu_seconds(int(entry.name))
    return total


@contextlib.contextmanager
def own_postgres(url: str) -> Iterator[str]:
    """`url`, or a throwaway PostgreSQL server's (tests/pg.py) when none is given."""
    if url:
        yield url
        return
    from tests.pg import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        yield server.create_database()
    finally:
        server.stop()


def server_argv(data_dir: Path, target: str, database: str, flush_interval: float) -> list[str]:
    return [
        sys.executable, "-m", "oma_server.cli", "serve", "--listen", target, "--data-dir", str(data_dir),
        "--nbd-listen", f"127.0.0.1:{free_port()}", "--appliance-listen", f"127.0.0.1:{free_port()}",
        "--log-level", "WARNING", "--progress-flush-interval", str(flush_interval), "--insecure",
        "--database", database,
    ]  # fmt: skip


async def measured_run(
    args: bp.Args, tmp: Path, nofile: int, database: str, specs: list[bp.VmaSpec], token: str, processes: int
) -> dict[str, Any]:
    """One run: `processes` servers, the specs spread over them, watchers on server 0."""
    targets = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    servers = [
        bp.Proc(f"oma-server-{i}", server_argv(tmp / f"p{processes}-{i}", t, database, args.flush_interval),
                tmp / f"oma-server-p{processes}-{i}.log")
        for i, t in enumerate(targets)
    ]  # fmt: skip
    groups = [specs[i::processes] for i in range(processes)]
    fleets: list[bp.VmaFleet] = []
    watchers: list[bp.Watcher] = []
    try:
        for server, target in zip(servers, targets, strict=True):
            await server.wait_ready(bp.grpc_healthy(target), 90)
        watchers = [bp.Watcher(targets[0], token) for _ in range(args.watchers)]
        for w in watchers:
            await w.start()
        for group, target in zip(groups, targets, strict=True):
            params = bp.DriverParams(target, args.rate, args.seconds, "oma", len(group))
            fleets.append(bp.VmaFleet(group, params, args.workers, nofile))
        ready = sum([(await fleet.prepare())[0] for fleet in fleets])
        print(f"  {processes} process(es): {ready}/{len(specs)} streams welcomed", flush=True)
        t0 = time.time() + 0.5
        cpu0 = [bp.cpu_seconds(s.pid) for s in servers]
        pg0 = postgres_cpu_seconds()
        runs = [asyncio.create_task(fleet.run(t0)) for fleet in fleets]
        # --profile: process 0 of the N-process run (it holds its own streams, takes the others' relay, feeds the
        # watchers)
        spy = bp.start_profiler(args.profile, servers[0].pid, args.seconds) if args.profile and processes > 1 else None
        await asyncio.sleep(max(0.0, t0 + args.seconds - time.time()))
        wall = time.time() - t0
        cpu = [bp.cpu_seconds(s.pid) - c for s, c in zip(servers, cpu0, strict=True)]
        pg_cpu = postgres_cpu_seconds() - pg0
        rss = [bp.proc_status_kib(s.pid, "VmRSS") for s in servers]
        by_group = [(await run)[0] for run in runs]
        if spy is not None:
            await asyncio.to_thread(spy.wait, 60)
            print(f"  process 0 profile (py-spy, collapsed stacks): {args.profile}", flush=True)
    finally:
        for w in watchers:
            await w.stop()
        for fleet in fleets:
            fleet.stop()
        for server in servers:
            server.stop()
    results = [r for rs in by_group for r in rs]
    ordered_specs = [s for g in groups for s in g]
    watch_s, _ = bp.watch_latencies(results, ordered_specs, watchers)
    cross_specs = [s for g in groups[1:] for s in g]
    cross_results = [r for rs in by_group[1:] for r in rs]
    cross_s, _ = bp.watch_latencies(cross_results, cross_specs, watchers) if cross_specs else ([], 0)
    return {
        "processes": processes,
        "streams": len(specs),
        "streams_held": sum(1 for r in results if r["open_at_end"]),
        "offered_reports_per_s": round(len(specs) * args.rate, 1),
        "reports_per_s": round(bp.windowed_rate(results, t0 + bp.WARM_S, t0 + args.seconds), 1),
        "p50_watch_ms": bp.ms(bp.pct(watch_s, 50)),
        "p99_watch_ms": bp.ms(bp.pct(watch_s, 99)),
        "p50_watch_cross_ms": bp.ms(bp.pct(cross_s, 50)) if cross_s else None,
        "p99_watch_cross_ms": bp.ms(bp.pct(cross_s, 99)) if cross_s else None,
        "watch_coverage": round(len(watch_s) / max(1, sum(len(r["sent"]) for r in results) * len(watchers)), 3),
        "server_cpu_pct": [round(100 * c / wall, 1) for c in cpu],
        "server_rss_mib": [round(k / 1024, 1) for k in rss],
        "pg_cpu_pct": round(100 * pg_cpu / wall, 1),
        "vma_errors": sum(1 for r in results if r["error"]),
        "watcher_errors": [w.error for w in watchers if w.error],
    }


async def run_cluster(args: bp.Args, processes: int, tmp: Path, nofile: int, out: dict[str, Any]) -> None:
    with own_postgres(args.database) as database:
        out["params"]["database"] = "postgresql"
        started = time.time()
        specs = await bp.seed(tmp / "seed", database, args.streams * (1 + processes))
        print(f"  seeded {len(specs)} appliances + jobs in {time.time() - started:.1f} s", flush=True)
        token = (tmp / "seed" / "admin.token").read_text().strip()
        print(f"[1/2] one process: {args.streams} streams x {args.rate}/s for {args.seconds} s", flush=True)
        one = await measured_run(args, tmp, nofile, database, specs[: args.streams], token, 1)
        print(f"[2/2] {processes} processes: {args.streams * processes} streams, watchers on process 0", flush=True)
        many = await measured_run(args, tmp, nofile, database, specs[args.streams :], token, processes)
    out["one_process"] = one
    out["processes_run"] = many
    out.update(
        processes=processes,
        streams=many["streams"],
        reports_per_s=many["reports_per_s"],
        p99_watch_ms=many["p99_watch_ms"],
        p99_watch_cross_ms=many["p99_watch_cross_ms"],
        scale_ratio=round(many["reports_per_s"] / max(1e-9, one["reports_per_s"]), 3),
        pg_cpu_pct=many["pg_cpu_pct"],
        machine_load=os.getloadavg()[0],
    )


def print_table(out: dict[str, Any]) -> None:
    one, many = out["one_process"], out["processes_run"]
    rows = [
        ("processes", 1, many["processes"]),
        ("streams (held)", f"{one['streams']} ({one['streams_held']})", f"{many['streams']} ({many['streams_held']})"),
        ("offered reports/s", one["offered_reports_per_s"], many["offered_reports_per_s"]),
        ("reports/s applied", one["reports_per_s"], many["reports_per_s"]),
        ("watch p50 / p99 ms", f"{one['p50_watch_ms']} / {one['p99_watch_ms']}",
         f"{many['p50_watch_ms']} / {many['p99_watch_ms']}"),
        ("watch p50 / p99 ms, other process's streams", "-",
         f"{many['p50_watch_cross_ms']} / {many['p99_watch_cross_ms']}"),
        ("server CPU % (each)", one["server_cpu_pct"], many["server_cpu_pct"]),
        ("server RSS MiB (each)", one["server_rss_mib"], many["server_rss_mib"]),
        ("PostgreSQL CPU %", one["pg_cpu_pct"], many["pg_cpu_pct"]),
        ("VMA / watcher errors", f"{one['vma_errors']} / {len(one['watcher_errors'])}",
         f"{many['vma_errors']} / {len(many['watcher_errors'])}"),
    ]  # fmt: skip
    print(f"  {'':44} {'1 process':>22} {'N processes':>22}")
    for name, a, b in rows:
        print(f"  {name:44} {a!s:>22} {b!s:>22}")
    print(f"  scale_ratio (reports/s N / 1, same load per process): {out['scale_ratio']}  target: >= 1.4")
