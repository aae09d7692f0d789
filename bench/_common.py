"""Helpers shared by the benchmarks: machine info, percentiles, a printed table, the JSON result file, and for the
data-path benchmarks a sparse source image, dropping the page cache, a byte comparison and TLS material."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}" if value else "0"
    return str(value)


def print_table(
    rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]],
    columns: Sequence[str] | None = None,
    *,
    title: str | None = None,
    file: Any = None,
) -> None:
    """Print rows (dicts, or sequences with `columns`) as an aligned plain-text table."""
    out = file or sys.stdout
    if rows and isinstance(rows[0], Mapping):
        cols = list(columns or rows[0].keys())
        cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]  # type: ignore[union-attr]
    else:
        cols = list(columns or [])
        cells = [[_fmt(v) for v in r] for r in rows]  # type: ignore[union-attr]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    if title:
        print(title, file=out)
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print(
            "  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths, strict=True)),
            file=out,
        )


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit()


def write_json(path: str | os.PathLike[str], result: Mapping[str, Any]) -> None:
    """Write the result as pretty JSON (atomically), creating the parent directory."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, target)


MIB = 1 << 20


def source_arguments(parser: argparse.ArgumentParser, size_mib: int) -> None:
    """--size-mib, --allocated and --runs: the source image of `make_source` and how many copies a figure takes."""
    parser.add_argument("--size-mib", type=int, default=size_mib, help=f"source disk size (default {size_mib})")
    parser.add_argument("--allocated", type=float, default=0.6, help="allocated fraction of the source (0.6)")
    parser.add_argument("--runs", type=int, default=3, help="copies per case; the median counts (default 3)")


def make_source(path: Path, size: int, allocated: float, seed: int) -> None:
    """A sparse disk image: runs of 1-16 MiB data (random, text-like, and 1 in 10 all-zero blocks inside data)
    covering about `allocated` of `size`, holes between them (blocking)."""
    rng = random.Random(seed)
    words = [b"vmware", b"cloudstack", b"volume", b"block", b"sector", b"ext4", b"ntfs", b"journal"]
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            run = min(rng.randint(1, 16) * MIB, size - pos)
            if rng.random() < allocated:
                f.seek(pos)
                for off in range(0, run, MIB):
                    n = min(MIB, run - off)
                    kind = rng.random()
                    if kind < 0.1:
                        chunk = bytes(n)
                    elif kind < 0.75:
                        chunk = rng.randbytes(n)
                    else:
                        chunk = b" ".join(rng.choice(words) for _ in range(n // 6 + 1))[:n]
                    f.write(chunk)
            pos += run


def raw_read_seconds(path: Path) -> float:
    """Seconds to read `path` start to end (4 MiB reads, no Python buffering): the local read ceiling."""
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(4 * MIB)
        while f.readinto(buf):
            pass
    return time.perf_counter() - started


def nbdcopy_seconds(source: Path, uri: str) -> float:
    """Seconds for `nbdcopy --flush --target-is-zero source uri`: libnbd's C copier, the peer every copy figure is
    measured against. `--target-is-zero` gives it what our copier knows of a new volume (it reads as zeros), so both
    skip the holes instead of zeroing them: the same work on both sides."""
    started = time.perf_counter()
    argv = ["nbdcopy", "--flush", "--target-is-zero", str(source), uri]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"nbdcopy {source} -> {uri} failed: {out.stderr.strip()}")
    return time.perf_counter() - started


def drop_caches() -> bool:
    """Write back and drop the page cache (root only); False where the machine does not allow it."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def same_file_bytes(a: Path, b: Path) -> bool:
    """Byte-for-byte equality of two files (`cmp`, so a mismatch costs no Python loop)."""
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def make_pki(directory: Path, psk_users: tuple[str, ...] = ()) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl), in the file names both nbdkit
    (`--tls-certificates=DIR`) and libnbd (`tls-certificates=DIR`) read; `keys.psk` with a key per user."""
    directory.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    ssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", "2", "-subj", "/CN=bench-ca")
    for role, subject, ext in (
        ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "/CN=vma-bench", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{role}.ext").write_text(ext)
        ssl("req", *ec, "-keyout", f"{role}-key.pem", "-out", f"{role}.csr", "-subj", subject)
        ssl("x509", "-req", "-in", f"{role}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-out", f"{role}-cert.pem", "-days", "2", "-extfile", f"{role}.ext")  # fmt: skip
    psk = directory / "keys.psk"
    psk.write_text("".join(f"{user}:{secrets.token_hex(32)}\n" for user in psk_users))
    for key in (*directory.glob("*-key.pem"), psk):
        key.chmod(0o600)
    return directory
