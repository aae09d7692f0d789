"""NBD benchmark: nbdkit (file plugin, dir= mode) against nbd-server 3.24, measured the same way in the same run.

    python -m bench.nbd [--size-mib 2048] [--allocated 0.6] [--runs 3] [--live 200] [--iterations 20]
                        [--servers nbdkit,nbd-server] [--no-tls] [--json FILE] [--dir DIR] [--quick]

For each server, on the same source image (a sparse disk of --size-mib with --allocated of it data: random and
text-like runs with some all-zero blocks) and into a fresh sparse target per copy:

1. **Throughput** (median of --runs; the page cache is dropped before every copy when the machine allows it):
   `nbdcopy --flush --target-is-zero` (the peer: libnbd's C copier, told the target is new as our copier is) and the
   reference agent's copier (`DiskCopier`, full plan, fresh target) into the same export; plaintext, x509 TLS with
   peer verification (both servers) and PSK (nbdkit only).
   `ratio_to_nbdcopy` = ours / nbdcopy on the same server and transport. For context, a raw local read of the
   source. The copier is also run with a progress callback that builds the agent's ProgressReport every 0.1 s
   (`progress_cost`: throughput with it / without it), and with the source's block hashes taken from the buffers it
   copies, as the agent sends them to the OMA (`source_hash_ratio`: throughput with them / without them). Every
   replica is compared with its source byte for byte.
2. **Export changes with --live exports**: add p50/p99 (the call), `add_served` (until nbdinfo, started when add
   returns, has opened the new export), remove p50/p99 and `remove_served` (until a handshake no longer lists it).
   nbdkit through the OMA's own NbdExportManager; nbd-server through the handover restart the OMA used before
   (write the include file, SIGKILL the master, start a new one: its only way to change exports, see README).
3. **Live transfer across changes**: an nbdcopy into one export runs while exports are added and removed; it must
   finish byte-identical.
4. **Isolation**: whether a client with another appliance's credential is refused (PSK per instance for nbdkit;
   a certificate of another CA for both), and an idle server's RSS (the cost of one instance per appliance).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from bench._common import (
    drop_caches,
    machine_info,
    make_pki,
    make_source,
    nbdcopy_seconds,
    percentile,
    print_table,
    raw_read_seconds,
    same_file_bytes,
    source_arguments,
    write_json,
)
from oma_server.nbd import NbdExportManager
from oma_server.nbd.probe import ProbeError, list_exports
from oma_server.nbd.process import SERVER_NAME
from oma_server.ports import free_port

MiB = 1 << 20
TARGETS = {"ratio_to_nbdcopy": 1.0, "add_ms_p50": 200.0, "remove_ms_p50": 200.0}


# ---------------------------------------------------------------------------------------------- the candidates
@dataclass
class Transport:
    """How a client reaches an export: URI suffix and the server's extra arguments."""

    name: str  # plain | x509 | psk
    query: str = ""
    username: str = ""

    def uri(self, port: int, export: str) -> str:
        if self.name == "plain":
            return f"nbd://127.0.0.1:{port}/{export}"
        user = f"{self.username}@" if self.username else ""
        return f"nbds://{user}127.0.0.1:{port}/{export}?{self.query}"


@dataclass
class Server:
    """One running NBD server serving exports from `exports` (name -> file) on `port`."""

    kind: str
    work: Path
    port: int
    transport: Transport
    pki: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    exports: dict[str, Path] = field(default_factory=dict)

    # -- nbdkit: the OMA's command line (NbdExportManager._argv) plus TLS options
    def _nbdkit_argv(self) -> list[str]:
        argv = ["nbdkit", "--foreground", "--ipaddr", "127.0.0.1", "--port", str(self.port), "--threads", "16"]
        if self.transport.name == "x509":
            argv += ["--tls=require", f"--tls-certificates={self.pki}", "--tls-verify-peer"]
        elif self.transport.name == "psk":
            argv += ["--tls=require", f"--tls-psk={self.pki}/keys.psk"]
        return [*argv, "file", f"dir={self.work / 'exports'}"]

    # -- nbd-server: the config the OMA wrote before the switch (base + includedir, one file per export)
    def _nbd_server_config(self) -> Path:
        inc = self.work / "exports.d"
        inc.mkdir(exist_ok=True)
        lines = ["[generic]", f"port = {self.port}", "listenaddr = 127.0.0.1", "allowlist = true"]
        lines.append(f"includedir = {inc}")
        if self.transport.name == "x509":
            lines += [
                f"certfile = {self.pki}/server-cert.pem",
                f"keyfile = {self.pki}/server-key.pem",
                f"cacertfile = {self.pki}/ca-cert.pem",
                "force_tls = true",
            ]
        probe = self.work / "probe.img"
        if not probe.exists():
            probe.write_bytes(bytes(4096))
        lines += ["[oma-probe]", f"exportname = {probe}", "readonly = true"]
        cfg = self.work / "config"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def _write_nbd_server_export(self, name: str, path: Path) -> None:
        (self.work / "exports.d").mkdir(parents=True, exist_ok=True)
        # splice (nbd-server's zero-copy path, on in the OMA's old config) cannot work under TLS: writes fail with
        # ENOTCONN, so TLS exports go without it.
        splice = "false" if self.transport.name != "plain" else "true"
        text = f"[{name}]\nexportname = {path}\nreadonly = false\nflush = true\nsplice = {splice}\n"
        tmp = self.work / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.work / "exports.d" / f"{name}.conf")

    def start(self) -> None:
        (self.work / "exports").mkdir(parents=True, exist_ok=True)
        if self.kind == "nbdkit":
            log = open(self.work / "server.log", "ab")  # noqa: SIM115 - the child keeps it
            self.proc = subprocess.Popen(self._nbdkit_argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            self.pid = self.proc.pid
        else:
            self._start_nbd_server()
        asyncio.run(self.wait_served(set()))

    def _start_nbd_server(self) -> None:
        pidfile = self.work / "nbd-server.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run(["nbd-server", "-C", str(self._nbd_server_config()), "-p", str(pidfile)], check=True)
        while not pidfile.exists() or not pidfile.read_text().strip():
            time.sleep(0.001)
        self.pid = int(pidfile.read_text().strip())

    def add(self, name: str, path: Path) -> None:
        """Add an export the way the OMA did/does for this server (nbd-server: a handover restart)."""
        self.exports[name] = path
        if self.kind == "nbdkit":
            (self.work / "exports" / name).symlink_to(path)
        else:
            self._write_nbd_server_export(name, path)
            self._handover()

    def remove(self, name: str) -> None:
        self.exports.pop(name)
        if self.kind == "nbdkit":
            (self.work / "exports" / name).unlink()
        else:
            (self.work / "exports.d" / f"{name}.conf").unlink()
            self._handover()

    def _handover(self) -> None:
        """nbd-server: SIGKILL the master (its per-client children keep serving), start a new one."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            while _alive(self.pid):
                time.sleep(0.001)
        while _port_bound(self.port):  # a child caught mid-handshake may still hold the socket
            time.sleep(0.001)
        self._start_nbd_server()

    async def wait_served(self, names: set[str], *, gone: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Until a real handshake lists `names` and none of `gone` (plaintext servers only list)."""
        if self.transport.name != "plain":
            await _nbdinfo_ok(self.transport.uri(self.port, ""), list_only=True, tls_dir=self.pki)
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                listed = set(await list_exports("127.0.0.1", self.port, timeout=2.0))
            except Exception:
                listed = None
            if listed is not None and names <= listed and not (gone & listed):
                return
            await asyncio.sleep(0.002)
        raise RuntimeError(f"{self.kind}: exports {names} not served (or {gone} still served) after 30 s")

    def stop(self) -> None:
        if self.kind == "nbdkit" and self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        elif self.pid is not None:
            os.kill(self.pid, signal.SIGTERM)  # nbd-server's SIGTERM ends its children too
            while _alive(self.pid):
                time.sleep(0.001)
        self.proc = None
        self.pid = None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _port_bound(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


async def _nbdinfo_ok(uri: str, *, list_only: bool = False, tls_dir: Path | None = None) -> None:
    argv = ["nbdinfo", "--list", uri] if list_only else ["nbdinfo", "--size", uri]
    deadline = time.monotonic() + 30
    while True:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:  # retried: nbd-server refuses connections between its restarts
            raise RuntimeError(f"nbdinfo {uri} failed: {err.decode().strip()}")
        await asyncio.sleep(0.01)


def server_version(kind: str) -> str:
    argv = ["nbdkit", "--version"] if kind == "nbdkit" else ["nbd-server", "-V"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0] if lines else kind


# ---------------------------------------------------------------------------------------------- 1. throughput
def ours(
    src: Path,
    uri: str,
    *,
    transport: Transport,
    pki: Path,
    progress: bool = False,
    hashed: bool = False,
    **options: Any,
) -> float:
    """The reference agent's copier, full plan into a fresh target; with `progress`, the agent's report cost; with
    `hashed`, the source's block hashes taken from the buffers it copies (what the agent sends the OMA)."""
    from vma.v1 import stream_pb2
    from vma_client_stubs.agent.copier import CopyProgress, DiskCopier, Plan, TlsSettings
    from vma_client_stubs.agent.extents import allocated_extents
    from vma_client_stubs.agent.source_hashes import SourceHasher

    plan = Plan.full(allocated_extents(src), src.stat().st_size, fresh_target=True)
    if hashed:
        options["hasher"] = SourceHasher(plan, src.stat().st_size, whole_disk=True)
    reports: list[bytes] = []

    def report(p: CopyProgress) -> None:  # what the agent builds per report (one disk)
        msg = stream_pb2.ProgressReport(job_id="bench", bytes_done=p.bytes_done, bytes_total=p.bytes_total)
        msg.disks.append(stream_pb2.DiskProgress(disk_id="d", bytes_done=p.bytes_done, resume_token=p.resume_token))
        reports.append(msg.SerializeToString())

    if transport.name == "x509":
        options["tls"] = TlsSettings(certificates_dir=pki)
    elif transport.name == "psk":
        options["tls"] = TlsSettings(psk_file=pki / "keys.psk", username=transport.username)
    uri = uri.split("?", 1)[0].replace(f"{transport.username}@", "") if transport.name != "plain" else uri
    t0, cpu0 = time.perf_counter(), time.process_time()
    DiskCopier(src, uri, plan, fresh_target=True, on_progress=report if progress else None, **options).run()
    if hashed:
        options["hasher"].runs()  # what the agent then sends, built as it builds it
    elapsed = time.perf_counter() - t0
    CPU_SECONDS.append(time.process_time() - cpu0)  # every thread of the copier: it runs in this process
    if progress and not reports:
        raise RuntimeError("the progress callback was never called")
    return elapsed


#: the CPU time of each run of our copier, in order (the case that ran it takes it)
CPU_SECONDS: list[float] = []


@dataclass
class Case:
    server: str
    transport: str
    tool: str  # nbdcopy | ours | ours+progress | ours+hash
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # our copier's process CPU time (not nbdcopy's)


def bench_throughput(
    work: Path, src: Path, servers: list[str], transports: list[str], runs: int, copier: dict[str, Any], log: Callable
) -> tuple[list[Case], dict[str, Any]]:
    pki = make_pki(work / "pki", psk_users=("vma-a",))
    size = src.stat().st_size
    cases: list[Case] = []
    for kind in servers:
        for name in transports:
            if kind == "nbd-server" and name == "psk":
                continue  # nbd-server has no PSK
            extra = ["ours+progress", "ours+hash"] if name == "plain" and kind == "nbdkit" else []
            tools = ["nbdcopy", "ours", *extra]
            cases += [Case(kind, name, tool) for tool in tools]
    transports_by_name = {
        "plain": Transport("plain"),
        "x509": Transport("x509", f"tls-certificates={pki}"),
        "psk": Transport("psk", f"tls-psk-file={pki}/keys.psk", "vma-a"),
    }
    raw: list[float] = []
    dropped = True
    for run in range(runs):
        dropped &= drop_caches()
        raw.append(raw_read_seconds(src))
        # One server at a time; the cases of a run in a rotating order so no tool always goes first.
        for kind in servers:
            for tname in transports:
                mine = [c for c in cases if c.server == kind and c.transport == tname]
                if not mine:
                    continue
                transport = transports_by_name[tname]
                server = Server(kind, work / f"{kind}-{tname}", free_port(), transport, pki)
                server.start()
                try:
                    order = mine[run % len(mine) :] + mine[: run % len(mine)]
                    for case in order:
                        target = work / "target.img"
                        target.unlink(missing_ok=True)
                        with open(target, "wb") as f:
                            f.truncate(size)
                        name = f"oma-vol-{case.tool.replace('+', '-')}"
                        server.add(name, target)
                        asyncio.run(server.wait_served({name}))
                        uri = transport.uri(server.port, name)
                        dropped &= drop_caches()
                        if case.tool == "nbdcopy":
                            seconds = nbdcopy_seconds(src, uri)
                        else:
                            seconds = ours(
                                src,
                                uri,
                                transport=transport,
                                pki=pki,
                                progress=case.tool == "ours+progress",
                                hashed=case.tool == "ours+hash",
                                **copier,
                            )
                        if not same_file_bytes(src, target):
                            raise RuntimeError(f"{kind}/{tname}/{case.tool}: the replica differs from the source")
                        case.seconds.append(seconds)
                        if case.tool != "nbdcopy":
                            case.cpu_seconds.append(CPU_SECONDS[-1])
                        log(f"  run {run + 1}: {kind:10} {tname:5} {case.tool:14} {size / MiB / seconds:8.1f} MiB/s")
                        server.remove(name)
                        target.unlink()
                finally:
                    server.stop()
    return cases, {"raw_read_mib_s": size / MiB / statistics.median(raw), "caches_dropped": dropped}


# ---------------------------------------------------------------------------------------------- 2.-3. changes
async def bench_changes(work: Path, kind: str, live: int, iterations: int, src: Path, size: int) -> dict[str, Any]:
    """Add/remove latency with `live` exports, while nbdcopy copies into one of them, again and again."""
    disks = work / f"disks-{kind}"
    disks.mkdir()

    def disk(name: str, n: int = 64 * MiB) -> Path:
        path = disks / f"{name}.img"
        with open(path, "wb") as f:
            f.truncate(n)
        return path

    desired = {f"oma-vol-live{i:03d}": disk(f"live{i}") for i in range(live)}
    stream_target = disk("stream", size)
    mgr: NbdExportManager | None = None
    server: Server | None = None
    if kind == "nbdkit":
        mgr = NbdExportManager(work / "mgr", listen=f"127.0.0.1:{free_port()}", probe_interval_s=5.0)
        await mgr.start(desired={**{k: str(v) for k, v in desired.items()}, "oma-vol-stream": str(stream_target)})
        await mgr.wait_ready(timeout=30)
        port = mgr.port
    else:
        server = Server(kind, work / "nbd-server-changes", free_port(), Transport("plain"))
        server.work.mkdir(parents=True)
        for name, path in {**desired, "oma-vol-stream": stream_target}.items():
            server._write_nbd_server_export(name, path)
        await asyncio.to_thread(server.start)
        port = server.port
    add: list[float] = []
    remove: list[float] = []
    add_served: list[float] = []
    remove_served: list[float] = []
    stop_streaming = asyncio.Event()
    streamed: list[bool] = []  # one entry per finished copy: byte-identical or not

    async def stream_while_changing() -> None:
        """nbdcopy into one export, again and again, until the changes are done: every copy must succeed."""
        while not stop_streaming.is_set():
            proc = await asyncio.create_subprocess_exec(
                "nbdcopy", "--flush", str(src), f"nbd://127.0.0.1:{port}/oma-vol-stream", stderr=asyncio.subprocess.PIPE
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                logger.warning("{}: the live transfer failed: {}", kind, err.decode().strip())
            streamed.append(proc.returncode == 0 and await asyncio.to_thread(same_file_bytes, src, stream_target))
            await asyncio.to_thread(stream_target.write_bytes, b"")  # empty again: the next copy must rewrite it
            await asyncio.to_thread(os.truncate, stream_target, size)

    streamer = asyncio.create_task(stream_while_changing())
    try:
        for i in range(iterations):
            name = f"oma-vol-extra{i:03d}"
            path = disk(f"extra{i}")
            t0 = time.perf_counter()
            if mgr is not None:
                await mgr.add_export(name, str(path))
            else:
                assert server is not None
                await asyncio.to_thread(server.add, name, path)
            add.append((time.perf_counter() - t0) * 1000)
            await _nbdinfo_ok(f"nbd://127.0.0.1:{port}/{name}")
            add_served.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            if mgr is not None:
                await mgr.remove_export(name)
            else:
                assert server is not None
                await asyncio.to_thread(server.remove, name)
            remove.append((time.perf_counter() - t0) * 1000)
            await _until_unlisted(kind, port, name)
            remove_served.append((time.perf_counter() - t0) * 1000)
        stop_streaming.set()
        await streamer
    finally:
        stop_streaming.set()
        if not streamer.done():
            streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
        if mgr is not None:
            await mgr.stop()
        if server is not None:
            await asyncio.to_thread(server.stop)
        shutil.rmtree(disks, ignore_errors=True)
    intact = bool(streamed) and all(streamed)
    out: dict[str, Any] = {
        "live_exports": live,
        "iterations": iterations,
        "live_transfer_intact": intact,
        "live_transfers_during_changes": len(streamed),
    }
    for key, values in (
        ("add_ms", add),
        ("remove_ms", remove),
        ("add_served_ms", add_served),
        ("remove_served_ms", remove_served),
    ):
        out[f"{key}_p50"] = round(percentile(values, 50), 2)
        out[f"{key}_p99"] = round(percentile(values, 99), 2)
    return out


async def _until_unlisted(kind: str, port: int, name: str) -> None:
    """Until a handshake answers without `name` (nbd-server refuses connections between its restarts: retried)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if name not in await list_exports("127.0.0.1", port, timeout=5.0):
                return
        except ProbeError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind}: {name} still listed (or nothing answers) 30 s after removal")
        await asyncio.sleep(0.002)


# ---------------------------------------------------------------------------------------------- 4. isolation
def bench_isolation(work: Path, kind: str) -> dict[str, Any]:
    """Is a client with another appliance's credential refused? And what does an idle instance cost?"""
    pki = make_pki(work / f"pki-iso-{kind}", psk_users=("vma-a",))
    foreign = make_pki(work / f"pki-foreign-{kind}", psk_users=("vma-b",))
    disk = work / f"iso-{kind}.img"
    with open(disk, "wb") as f:
        f.truncate(MiB)
    out: dict[str, Any] = {}
    modes = [("x509", Transport("x509", f"tls-certificates={pki}"), Transport("x509", f"tls-certificates={foreign}"))]
    if kind == "nbdkit":
        modes.append(
            (
                "psk",
                Transport("psk", f"tls-psk-file={pki}/keys.psk", "vma-a"),
                Transport("psk", f"tls-psk-file={foreign}/keys.psk", "vma-b"),
            )
        )
    for mode, own, other in modes:
        server = Server(kind, work / f"iso-{kind}-{mode}", free_port(), own, pki)
        server.start()
        try:
            server.add("oma-vol-a", disk)
            asyncio.run(server.wait_served(set()))
            ok = _client_ok(own.uri(server.port, "oma-vol-a"))
            plain = _client_ok(Transport("plain").uri(server.port, "oma-vol-a"))
            stranger = _client_ok(other.uri(server.port, "oma-vol-a"))
            out[f"{mode}_own_credential_served"] = ok
            out[f"{mode}_plaintext_refused"] = not plain
            out[f"{mode}_foreign_credential_refused"] = not stranger
            if mode == "x509" and server.pid is not None:
                out["idle_rss_kib"] = _rss_kib(server.pid)
        finally:
            server.stop()
    return out


def _client_ok(uri: str) -> bool:
    return subprocess.run(["nbdinfo", "--size", uri], capture_output=True, check=False).returncode == 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------- main
def summarise(cases: list[Case], size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cases:
        out[f"{c.server}.{c.transport}.{c.tool}_mib_s"] = round(size / MiB / statistics.median(c.seconds), 1)
        out[f"{c.server}.{c.transport}.{c.tool}_s_all"] = [round(s, 3) for s in c.seconds]
        if c.cpu_seconds:
            out[f"{c.server}.{c.transport}.{c.tool}_cpu_s_per_gib"] = round(
                statistics.median(c.cpu_seconds) * 1024 * MiB / size, 3
            )
    for server in {c.server for c in cases}:
        for transport in {c.transport for c in cases}:
            key = f"{server}.{transport}"
            if f"{key}.ours_mib_s" in out and f"{key}.nbdcopy_mib_s" in out:
                out[f"{key}.ratio_to_nbdcopy"] = round(out[f"{key}.ours_mib_s"] / out[f"{key}.nbdcopy_mib_s"], 3)
            if transport != "plain" and f"{server}.plain.nbdcopy_mib_s" in out and f"{key}.nbdcopy_mib_s" in out:
                out[f"{key}.tls_ratio_nbdcopy"] = round(
                    out[f"{key}.nbdcopy_mib_s"] / out[f"{server}.plain.nbdcopy_mib_s"], 3
                )
                out[f"{key}.tls_ratio_ours"] = round(out[f"{key}.ours_mib_s"] / out[f"{server}.plain.ours_mib_s"], 3)
        for tool, key in (("ours+progress", "progress_cost"), ("ours+hash", "source_hash_ratio")):
            if f"{server}.plain.{tool}_mib_s" in out:
                out[f"{server}.{key}"] = round(
                    out[f"{server}.plain.{tool}_mib_s"] / out[f"{server}.plain.ours_mib_s"], 3
                )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nbd", description=__doc__.splitlines()[0])
    source_arguments(parser, size_mib=2048)
    parser.add_argument("--live", type=int, default=200, help="exports live during add/remove (default 200)")
    parser.add_argument("--iterations", type=int, default=20, help="add/remove cycles (default 20)")
    parser.add_argument("--servers", default="nbdkit,nbd-server", help="comma-separated: nbdkit, nbd-server")
    parser.add_argument("--no-tls", action="store_true", help="plaintext only")
    parser.add_argument("--chunk-kib", type=int, default=0, help="the copier's request size (default: its own)")
    parser.add_argument("--window", type=int, default=0, help="the copier's requests in flight per connection")
    parser.add_argument("--connections", type=int, default=0, help="the copier's connections")
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 MiB, 1 run, 20 live, 3 cycles")
    parser.add_argument("--dir", help="work directory (default: the system temp dir)")
    parser.add_argument("--json", help="write the result as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.runs, args.live, args.iterations = 256, 1, 20, 3
    servers = [s for s in args.servers.split(",") if s]
    needed = ["nbdcopy", "nbdinfo", "openssl"] + [{"nbdkit": "nbdkit", "nbd-server": "nbd-server"}[s] for s in servers]
    for tool in needed:
        if shutil.which(tool) is None:
            print(f"bench.nbd needs {tool}; `make tools` installs nbdkit, libnbd-bin (and nbd-server)", file=sys.stderr)
            return 2
    copier: dict[str, Any] = {}
    if args.chunk_kib:
        copier["chunk_size"] = args.chunk_kib * 1024
    if args.window:
        copier["window"] = args.window
    if args.connections:
        copier["connections"] = args.connections
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    transports = ["plain"] if args.no_tls else ["plain", "x509", "psk"]
    base = Path(args.dir) if args.dir else None
    work = Path(tempfile.mkdtemp(prefix="bench-nbd-", dir=base))
    started = time.monotonic()

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        src = work / "source.img"
        make_source(src, args.size_mib * MiB, args.allocated, seed=20240601)
        size = src.stat().st_size
        say(f"[1/3] throughput: {args.size_mib} MiB, {src.stat().st_blocks * 512 / MiB:.0f} MiB allocated")
        cases, context = bench_throughput(work, src, servers, transports, args.runs, copier, say)
        result: dict[str, Any] = {
            "size_mib": args.size_mib,
            "allocated_mib": round(src.stat().st_blocks * 512 / MiB),
            "runs": args.runs,
            "copier_options": copier or "defaults",
            **context,
            **summarise(cases, size),
        }
        say(f"[2/3] export changes with {args.live} live exports, a transfer running")
        for kind in servers:
            for key, value in asyncio.run(bench_changes(work, kind, args.live, args.iterations, src, size)).items():
                result[f"{kind}.{key}"] = value
        say("[3/3] isolation")
        if not args.no_tls:
            for kind in servers:
                for key, value in bench_isolation(work, kind).items():
                    result[f"{kind}.{key}"] = value
    finally:
        shutil.rmtree(work, ignore_errors=True)
    chosen = SERVER_NAME
    result.update(
        {
            "nbd_server": chosen,
            "versions": {s: server_version(s) for s in servers},
            "ratio_to_nbdcopy": result.get(f"{chosen}.plain.ratio_to_nbdcopy"),
            "full_mib_s": result.get(f"{chosen}.plain.ours_mib_s"),
            "nbdcopy_mib_s": result.get(f"{chosen}.plain.nbdcopy_mib_s"),
            "targets": {"ratio_to_nbdcopy": ">= 1.0", "add_ms_p50": "< 200", "remove_ms_p50": "< 200"},
            "machine": machine_info(),
            "total_s": round(time.monotonic() - started, 1),
        }
    )
    report(result, servers, transports)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def report(result: dict[str, Any], servers: list[str], transports: list[str]) -> None:
    rows = []
    for kind in servers:
        for t in transports:
            key = f"{kind}.{t}"
            if f"{key}.nbdcopy_mib_s" not in result:
                continue
            rows.append(
                {
                    "server": kind,
                    "transport": t,
                    "nbdcopy MiB/s": result[f"{key}.nbdcopy_mib_s"],
                    "ours MiB/s": result[f"{key}.ours_mib_s"],
                    "ratio_to_nbdcopy": result[f"{key}.ratio_to_nbdcopy"],
                    "TLS/plain (nbdcopy, ours)": (
                        f"{result[f'{key}.tls_ratio_nbdcopy']:.2f}, {result[f'{key}.tls_ratio_ours']:.2f}"
                        if t != "plain"
                        else ""
                    ),
                }
            )
    print()
    print_table(
        rows,
        title=f"Throughput, median of {result['runs']} ({result['size_mib']} MiB, {result['allocated_mib']} MiB "
        f"allocated; raw local read {result['raw_read_mib_s']:.0f} MiB/s; caches dropped: {result['caches_dropped']})",
    )
    rows = []
    for kind in servers:
        rows.append(
            {
                "server": kind,
                "add p50/p99 ms": f"{result[f'{kind}.add_ms_p50']:g} / {result[f'{kind}.add_ms_p99']:g}",
                "served after add p50/p99": f"{result[f'{kind}.add_served_ms_p50']:g} / "
                f"{result[f'{kind}.add_served_ms_p99']:g}",
                "remove p50/p99 ms": f"{result[f'{kind}.remove_ms_p50']:g} / {result[f'{kind}.remove_ms_p99']:g}",
                "gone after remove p50": result[f"{kind}.remove_served_ms_p50"],
                "live transfer intact": result[f"{kind}.live_transfer_intact"],
                "progress cost": result.get(f"{kind}.progress_cost", ""),
                "with source hashes": result.get(f"{kind}.source_hash_ratio", ""),
            }
        )
    print()
    print_table(rows, title=f"Export changes with {result[f'{servers[0]}.live_exports']} live exports")
    iso = [
        {"server": kind, **{k.split(".", 1)[1]: v for k, v in result.items() if k.startswith(f"{kind}.") and _iso(k)}}
        for kind in servers
    ]
    if any(len(r) > 1 for r in iso):
        print()
        print_table(iso, title="Isolation (a client with another appliance's credential) and idle cost")
    print(
        f"\nchosen server: {result['nbd_server']}; ratio_to_nbdcopy {result['ratio_to_nbdcopy']} "
        f"(target >= 1.0); {result['total_s']} s in all"
    )


def _iso(key: str) -> bool:
    return any(w in key for w in ("refused", "own_credential", "idle_rss"))


if __name__ == "__main__":
    raise SystemExit(main())
