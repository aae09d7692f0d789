"""What TLS costs on the data path: CPU per GiB, throughput with the cores as the limit, and at link speed.

    python -m bench.tls_cost [--size-mib 1024] [--allocated 0.6] [--runs 3] [--links 119,298] [--json FILE]

Into an nbdkit started with the OMA's command line (bench.nbd's `Server`), plaintext and x509 TLS with peer
verification (the OMA's default), on the same source and into a fresh sparse target per copy, the page cache
dropped before each copy where the machine allows it, every replica compared with its source:

1. **Unlimited**: nbdcopy (the peer) and the reference agent's copier; throughput, and the CPU seconds per GiB of
   data of the client (nbdcopy from its rusage, our copier from the process's CPU time) and of nbdkit (from
   /proc/PID/stat). On one machine both ends share its cores, so when the plaintext copy already keeps them busy
   (it does on 2 cores) TLS's ratio there is the CPU ratio, not what a site sees.
2. **At link speed**: our copier limited by its own token bucket (the agent's bandwidth limit) to each of --links
   MiB/s of data, plaintext and TLS: whether TLS still reaches the link. 119 MiB/s is 1 GbE, 298 2.5 GbE, 1,190
   10 GbE (a site's uplink to the cloud is rarely faster).

Figures: `tls_ratio_unlimited` (ours, TLS / plaintext), `nbdcopy_tls_ratio_unlimited`, `cpu_s_per_gib` per
transport and end, `tls_cpu_ratio` (TLS CPU / plaintext CPU, both ends), `tls_ratio_at_link` per link, each the
median of --runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from bench._common import (
    drop_caches,
    machine_info,
    make_pki,
    make_source,
    print_table,
    same_file_bytes,
    source_arguments,
    write_json,
)
from bench.nbd import Server, Transport, ours
from oma_server.ports import free_port

MiB = 1 << 20
GiB = 1 << 30
TRANSPORTS = ("plain", "x509")


@dataclass
class Sample:
    """One copy: wall seconds, and the CPU seconds of the client and of nbdkit."""

    seconds: float
    client_cpu: float
    server_cpu: float


@dataclass
class Series:
    transport: str
    tool: str  # nbdcopy | ours | ours@<MiB/s>
    samples: list[Sample] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(s, attribute) for s in self.samples)


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _nbdcopy(src: Path, uri: str) -> tuple[float, float]:
    before = _children_cpu_s()
    started = time.perf_counter()
    out = subprocess.run(["nbdcopy", "--flush", "--target-is-zero", str(src), uri], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"nbdcopy {src} -> {uri} failed: {out.stderr.strip()}")
    return time.perf_counter() - started, _children_cpu_s() - before


def _ours(src: Path, uri: str, transport: Transport, pki: Path, link_mib_s: float) -> tuple[float, float]:
    from vma_client_stubs.agent.rate_limit import TokenBucket

    limits = [TokenBucket(link_mib_s * MiB)] if link_mib_s else []
    before = time.process_time()
    seconds = ours(src, uri, transport=transport, pki=pki, limits=limits)
    return seconds, time.process_time() - before


def _copy(server: Server, series: Series, src: Path, pki: Path, work: Path) -> Sample:
    """One copy of `series`'s tool into a fresh export of `server`, checked byte for byte."""
    target = work / "target.img"
    target.unlink(missing_ok=True)
    with open(target, "wb") as f:
        f.truncate(src.stat().st_size)
    name = "oma-vol-" + series.tool.replace("@", "-at-")
    server.add(name, target)
    asyncio.run(server.wait_served({name}))
    uri = server.transport.uri(server.port, name)
    drop_caches()
    assert server.pid is not None
    server_before = _process_cpu_s(server.pid)
    if series.tool == "nbdcopy":
        seconds, client_cpu = _nbdcopy(src, uri)
    else:
        link = float(series.tool.split("@", 1)[1]) if "@" in series.tool else 0.0
        seconds, client_cpu = _ours(src, uri, server.transport, pki, link)
    sample = Sample(seconds, client_cpu, _process_cpu_s(server.pid) - server_before)
    if not same_file_bytes(src, target):
        raise RuntimeError(f"{series.transport}/{series.tool}: the replica differs from the source")
    server.remove(name)
    target.unlink()
    return sample


def measure(work: Path, src: Path, runs: int, links: list[float], say: Any) -> list[Series]:
    pki = make_pki(work / "pki")
    transports = {"plain": Transport("plain"), "x509": Transport("x509", f"tls-certificates={pki}")}
    tools = ["nbdcopy", "ours", *(f"ours@{link:g}" for link in links)]
    all_series = [Series(t, tool) for t in TRANSPORTS for tool in tools]
    data = _data_bytes(src)
    for run in range(runs):
        for transport in TRANSPORTS if run % 2 == 0 else reversed(TRANSPORTS):  # neither always goes first
            server = Server("nbdkit", work / f"nbdkit-{transport}", free_port(), transports[transport], pki)
            server.start()
            try:
                mine = [s for s in all_series if s.transport == transport]
                for series in mine[run % len(mine) :] + mine[: run % len(mine)]:
                    sample = _copy(server, series, src, pki, work)
                    series.samples.append(sample)
                    say(
                        f"  run {run + 1}: {transport:5} {series.tool:12} {data / MiB / sample.seconds:8.1f} MiB/s of "
                        f"data, CPU client {sample.client_cpu:5.2f} s, nbdkit {sample.server_cpu:5.2f} s"
                    )
            finally:
                server.stop()
    return all_series


def _data_bytes(src: Path) -> int:
    from vma_client_stubs.agent.extents import allocated_extents

    return sum(length for _, length in allocated_extents(src))


def summarise(all_series: list[Series], data: int, links: list[float]) -> dict[str, Any]:
    by = {(s.transport, s.tool): s for s in all_series}

    def mib_s(transport: str, tool: str) -> float:
        return data / MiB / by[(transport, tool)].median("seconds")

    def cpu_per_gib(transport: str, tool: str, end: str) -> float:
        return by[(transport, tool)].median(f"{end}_cpu") / (data / GiB)

    result: dict[str, Any] = {}
    for transport in TRANSPORTS:
        for tool in ("nbdcopy", "ours", *(f"ours@{link:g}" for link in links)):
            key = f"{transport}.{tool}"
            result[f"{key}.mib_s"] = round(mib_s(transport, tool), 1)
            result[f"{key}.client_cpu_s_per_gib"] = round(cpu_per_gib(transport, tool, "client"), 3)
            result[f"{key}.nbdkit_cpu_s_per_gib"] = round(cpu_per_gib(transport, tool, "server"), 3)
    result["tls_ratio_unlimited"] = round(mib_s("x509", "ours") / mib_s("plain", "ours"), 3)
    result["nbdcopy_tls_ratio_unlimited"] = round(mib_s("x509", "nbdcopy") / mib_s("plain", "nbdcopy"), 3)

    def both_ends(transport: str, tool: str) -> float:
        return cpu_per_gib(transport, tool, "client") + cpu_per_gib(transport, tool, "server")

    result["tls_cpu_ratio"] = round(both_ends("x509", "ours") / both_ends("plain", "ours"), 3)
    result["nbdcopy_tls_cpu_ratio"] = round(both_ends("x509", "nbdcopy") / both_ends("plain", "nbdcopy"), 3)
    result["tls_ratio_at_link"] = {
        f"{link:g}": round(mib_s("x509", f"ours@{link:g}") / mib_s("plain", f"ours@{link:g}"), 3) for link in links
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_cost", description=__doc__.splitlines()[0])
    source_arguments(parser, size_mib=1024)
    parser.add_argument("--links", default="119,298", help="link speeds in MiB/s of data, comma-separated")
    parser.add_argument("--dir", help="work directory (default: the system temp dir)")
    parser.add_argument("--json", help="write the result as JSON to this file")
    args = parser.parse_args(argv)
    links = [float(x) for x in args.links.split(",") if x]
    for tool in ("nbdkit", "nbdcopy", "nbdinfo", "openssl"):
        if shutil.which(tool) is None:
            print(f"bench.tls_cost needs {tool}; `make tools` installs it", file=sys.stderr)
            return 2
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    work = Path(tempfile.mkdtemp(prefix="bench-tls-", dir=args.dir))
    try:
        src = work / "source.img"
        make_source(src, args.size_mib * MiB, args.allocated, seed=20241204)
        data = _data_bytes(src)
        print(f"{args.size_mib} MiB source, {data / MiB:.0f} MiB of data; {args.runs} runs", flush=True)
        caches_dropped = drop_caches()
        all_series = measure(work, src, args.runs, links, lambda text: print(text, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "size_mib": args.size_mib,
        "data_mib": round(data / MiB),
        "runs": args.runs,
        "links_mib_s": links,
        "caches_dropped": caches_dropped,
        **summarise(all_series, data, links),
        "targets": {"tls_ratio": ">= 0.9"},
        "machine": machine_info(),
    }
    report(result, links)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def report(result: dict[str, Any], links: list[float]) -> None:
    rows = []
    for tool in ("nbdcopy", "ours", *(f"ours@{link:g}" for link in links)):
        plain, tls = (f"plain.{tool}", f"x509.{tool}")
        rows.append(
            [
                tool,
                f"{result[plain + '.mib_s']:.0f} / {result[tls + '.mib_s']:.0f}",
                f"{result[tls + '.mib_s'] / result[plain + '.mib_s']:.2f}",
                f"{result[plain + '.client_cpu_s_per_gib']:.2f} / {result[tls + '.client_cpu_s_per_gib']:.2f}",
                f"{result[plain + '.nbdkit_cpu_s_per_gib']:.2f} / {result[tls + '.nbdkit_cpu_s_per_gib']:.2f}",
            ]
        )
    print_table(rows, ["copy", "MiB/s of data plain / TLS", "TLS / plain", "client CPU s/GiB", "nbdkit CPU s/GiB"])
    ours_cpu, peer_cpu = result["tls_cpu_ratio"], result["nbdcopy_tls_cpu_ratio"]
    print(f"TLS CPU / plaintext CPU (both ends): ours {ours_cpu}, nbdcopy {peer_cpu}")


if __name__ == "__main__":
    sys.exit(main())
