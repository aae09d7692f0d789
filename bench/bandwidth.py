"""Copy-rate limits: how close the copier keeps to a limit, and how fast a live change takes effect.

    python -m bench.bandwidth [--json FILE] [--seconds 3] [--runs 3]

The reference agent's copier (4 connections, 8 requests in flight each, 2 MiB writes) copies a fully allocated
random source into an nbdkit `memory` export (so the target's disk is not what limits), through the agent's token
buckets. In the same run it copies without a limit (the ceiling: a limit above it cannot be reached).

- **Achieved rate** at 20, 50 and 100 MiB/s: the data bytes the copier wrote (its progress figure, counted as each
  write is admitted) between 0.5 s and the cancel that ends the measured period, over that time. `rate_error_max` is the
  largest |achieved/limit - 1| over the limits, median of the runs (target <= 0.05).
- **Change effect**: at 20 MiB/s the limit is raised to 100 MiB/s while writers wait, then lowered back, as the agent
  does on a SetBandwidthLimitCommand. The effect time is from the change to the first 200 ms window whose rate is
  within 10 % of the new limit (at least 0.9x after a rise, at most 1.1x after a fall). `change_effect_ms` is the
  larger of the two, median of the runs (target <= 1,000).
- **API to agent**: an in-process OMA (SQLite, the CloudStack simulator) and the reference agent on its stream;
  `SetBandwidthLimit` is called CHANGES times with alternating rates, each timed from the call to the moment the
  agent's appliance bucket runs at the new rate (the governor's pass, the outbox, the stream, the agent's command
  handler). `api_to_agent_ms_max` is the slowest; `change_effect_end_to_end_ms` adds it to `change_effect_ms`: the
  time from an operator's call to the copy running at the new rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loguru import logger

from bench._common import MIB, machine_info, print_table, write_json
from oma_server.ports import free_port

LIMITS_MIB = (20, 50, 100)
CHANGES = 20
TARGETS = {"rate_error_max": 0.05, "change_effect_ms": 1000.0}
WINDOW_S = 0.2
WARMUP_S = 0.5


class Target:
    """An nbdkit memory export on a free port (bigger than any source)."""

    def __init__(self, size: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["nbdkit", "--foreground", "--exit-with-parent", "-i", "127.0.0.1", "-p", str(self.port), "--threads",
             "16", "memory", f"size={size}"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while subprocess.run(["nbdinfo", "--can", "connect", self.uri], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("nbdkit did not start")
            time.sleep(0.05)

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Samples:
    """(time, data bytes written) as the copier reports them, every 10 ms."""

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []

    def __call__(self, progress: Any) -> None:
        self.points.append((time.perf_counter(), progress.bytes_written))

    def written_between(self, t0: float, t1: float) -> int:
        def at(t: float) -> int:
            before = [b for when, b in self.points if when <= t]
            return before[-1] if before else 0

        return at(t1) - at(t0)


def _copy(source: Path, uri: str, bucket: Any, seconds: float, during: Any = None) -> tuple[Samples, float]:
    """Copy `source` into `uri` through `bucket` for `seconds` (or to the end), then cancel; (samples, start)."""
    from vma_client_stubs.agent.copier import CopyCancelled, DiskCopier, Plan
    from vma_client_stubs.agent.extents import allocated_extents

    plan = Plan.full(allocated_extents(source), source.stat().st_size, fresh_target=True)
    cancel = threading.Event()
    samples = Samples()
    copier = DiskCopier(
        source, uri, plan, fresh_target=True, cancel=cancel, on_progress=samples, progress_interval_s=0.01,
        limits=(bucket,) if bucket is not None else (),
    )  # fmt: skip
    start = time.perf_counter()
    timer = threading.Timer(seconds, cancel.set)
    timer.start()
    helper = threading.Thread(target=during, args=(start,)) if during else None
    if helper:
        helper.start()
    try:
        copier.run()
    except CopyCancelled:
        pass
    finally:
        timer.cancel()
        if helper:
            helper.join()
    return samples, start


def achieved_rate(source: Path, uri: str, limit_mib: int, seconds: float) -> float:
    from vma_client_stubs.agent.rate_limit import TokenBucket

    samples, start = _copy(source, uri, TokenBucket(limit_mib * MIB), seconds)
    # Up to the cancel, not the last sample: a cancelled writer stops waiting and sends its chunk, which is not pacing.
    return samples.written_between(start + WARMUP_S, start + seconds) / (seconds - WARMUP_S) / MIB


def ceiling_rate(source: Path, uri: str) -> float:
    samples, start = _copy(source, uri, None, 60.0)
    end, written = samples.points[-1]
    return written / (end - start) / MIB


def _effect_ms(samples: Samples, changed: float, limit: float, rising: bool) -> float:
    """From the change to the start of the first WINDOW_S window at the new rate (within 10 %)."""
    for when, _ in samples.points:
        if when < changed:
            continue
        rate = samples.written_between(when, when + WINDOW_S) / WINDOW_S
        if (rate >= 0.9 * limit) if rising else (rate <= 1.1 * limit):
            return (when - changed) * 1000
    return float("inf")


def change_effect(source: Path, uri: str, low_mib: int, high_mib: int) -> tuple[float, float]:
    from vma_client_stubs.agent.rate_limit import TokenBucket

    bucket = TokenBucket(low_mib * MIB)
    changes: dict[str, float] = {}

    def retune(start: float) -> None:
        time.sleep(max(0.0, start + 1.0 - time.perf_counter()))
        changes["up"] = time.perf_counter()
        bucket.set_rate(high_mib * MIB)
        time.sleep(max(0.0, start + 2.0 - time.perf_counter()))
        changes["down"] = time.perf_counter()
        bucket.set_rate(low_mib * MIB)

    samples, _ = _copy(source, uri, bucket, 3.0, during=retune)
    return (
        _effect_ms(samples, changes["up"], high_mib * MIB, rising=True),
        _effect_ms(samples, changes["down"], low_mib * MIB, rising=False),
    )


async def api_to_agent(root: Path, changes: int) -> list[float]:
    """Milliseconds from each SetBandwidthLimit call to the agent running at its rate."""
    from oma.v1 import appliance_pb2, appliance_pb2_grpc, bandwidth_pb2, bandwidth_pb2_grpc
    from oma_server.app import App
    from oma_server.server import OmaServer
    from oma_server.settings import Settings
    from vma_client_stubs.agent.agent import Agent
    from vma_client_stubs.agent.vcenter import FakeVCenter
    from vma_client_stubs.connection import aio_channel

    logger.remove()  # the OMA's and the agent's logs would bury the table
    logger.add(sys.stderr, level="WARNING")
    settings = Settings(
        listen="127.0.0.1:0",
        data_dir=root / "oma",
        nbd_listen=f"127.0.0.1:{free_port()}",
        appliance_listen="127.0.0.1:0",
        allow_credential_hello=True,  # its VMA hellos with the enrollment credential
    )
    server = OmaServer(App(settings))
    await server.start()
    channel = aio_channel(server.local_endpoint())
    try:
        enrolled = await appliance_pb2_grpc.ApplianceServiceStub(channel).EnrollAppliance(
            appliance_pb2.EnrollApplianceRequest(name="bench-vma")
        )
        agent = Agent(
            oma=server.local_endpoint(),
            appliance_id=enrolled.appliance.id,
            credential=enrolled.credential,
            vcenter=FakeVCenter(root / "vcenter"),
            state_dir=root / "agent",
            fsync=False,
        )
        limits = bandwidth_pb2_grpc.BandwidthServiceStub(channel)
        target = bandwidth_pb2.BandwidthTarget(
            kind=bandwidth_pb2.BANDWIDTH_TARGET_KIND_APPLIANCE, id=enrolled.appliance.id
        )
        async with agent:
            while not server.app.hub.connected(enrolled.appliance.id):  # noqa: ASYNC110 - nothing to await on
                await asyncio.sleep(0.01)
            times = []
            for i in range(changes + 1):
                rate = (20 if i % 2 else 100) * MIB
                spec = bandwidth_pb2.BandwidthLimitSpec(target=target, bytes_per_second=rate)
                started = time.perf_counter()
                await limits.SetBandwidthLimit(bandwidth_pb2.SetBandwidthLimitRequest(spec=spec))
                while agent.bandwidth.appliance.rate != rate:  # noqa: ASYNC110 - polling is the measurement
                    await asyncio.sleep(0.0005)
                if i:  # the first one also waits for the agent's session to be looked at
                    times.append((time.perf_counter() - started) * 1000)
            return times
    finally:
        await channel.close()
        await server.stop(grace=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured period per limit (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    args = parser.parse_args(argv)
    size = 1024 * MIB
    with tempfile.TemporaryDirectory(prefix="bench-bandwidth-") as tmp:
        source = Path(tmp) / "source.img"
        with open(source, "wb") as f:
            for _ in range(size // (16 * MIB)):
                f.write(os.urandom(16 * MIB))  # all data: every byte counts against the limit
        target = Target(size)
        try:
            ceiling = statistics.median(ceiling_rate(source, target.uri) for _ in range(args.runs))
            rows = []
            errors = []
            for limit in LIMITS_MIB:
                rates = [achieved_rate(source, target.uri, limit, args.seconds) for _ in range(args.runs)]
                rate = statistics.median(rates)
                errors.append(abs(rate / limit - 1))
                rows.append({"limit_mib_s": limit, "achieved_mib_s": rate, "error": rate / limit - 1})
            effects = [change_effect(source, target.uri, 20, 100) for _ in range(args.runs)]
        finally:
            target.stop()
        delivery = asyncio.run(api_to_agent(Path(tmp) / "api", CHANGES))
    up_ms = statistics.median(e[0] for e in effects)
    down_ms = statistics.median(e[1] for e in effects)
    result = {
        "machine": machine_info(),
        "runs": args.runs,
        "seconds": args.seconds,
        "ceiling_mib_s": ceiling,
        "limits": rows,
        "rate_error_max": max(errors),
        "change_up_ms": up_ms,
        "change_down_ms": down_ms,
        "change_effect_ms": max(up_ms, down_ms),
        "api_to_agent_ms_median": statistics.median(delivery),
        "api_to_agent_ms_max": max(delivery),
        "change_effect_end_to_end_ms": max(delivery) + max(up_ms, down_ms),
        "targets": TARGETS,
    }
    print_table(rows, title=f"copier under a limit (unlimited ceiling {ceiling:,.0f} MiB/s, medians of {args.runs})")
    print_table(
        [
            {"figure": "rate_error_max", "value": result["rate_error_max"], "target": "<= 0.05"},
            {"figure": "change 20->100 MiB/s (ms)", "value": up_ms, "target": ""},
            {"figure": "change 100->20 MiB/s (ms)", "value": down_ms, "target": ""},
            {"figure": "change_effect_ms", "value": result["change_effect_ms"], "target": "<= 1000"},
            {"figure": f"API call to agent (ms, median of {CHANGES})", "value": result["api_to_agent_ms_median"]},
            {"figure": "API call to agent (ms, slowest)", "value": result["api_to_agent_ms_max"], "target": ""},
            {
                "figure": "change_effect_end_to_end_ms",
                "value": result["change_effect_end_to_end_ms"],
                "target": "<= 1000",
            },
        ]
    )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
