"""`python -m tests.cluster.soak --runs 20`: the multi-process kill scenarios of tests/cluster/deployment.py, many
times on one throwaway PostgreSQL (a database per run), seeded: each run kills the process holding the agent's
stream, or the one that attached and exports the replicas (with its nbdkit), at a seeded share of the copy (10 to
50 %), or the process provisioning the job. A run passes when the
job completes and the world ends consistent (every replica byte-identical, nothing left attached or exported, every
replica read back). Failed runs keep their directory (every process's log) and print it."""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.cluster.deployment import (
    KillMissed,
    deployment,
    home_process_killed,
    provisioning_process_killed,
    slow_cloud_seed,
    stream_holder_killed,
)
from tests.pg import PostgresServer


def victim_of(seed: int) -> str:
    """Which process the run of `seed` kills."""
    draw = random.Random(seed).random()
    return "stream holder" if draw < 0.4 else "home process" if draw < 0.8 else "provisioning process"


async def one_run(seed: int, root: Path, database_url: str) -> str:
    """'' when the run passed, "missed" when its kill came too late to count, else what failed."""
    rng = random.Random(seed)
    rng.random()  # the victim's draw (victim_of)
    victim = victim_of(seed)
    slow = victim == "provisioning process"
    world = await deployment(root, database_url, slow_cloud_seed(root / "cloud-seed.json") if slow else None)
    try:
        if victim == "stream holder":
            await stream_holder_killed(world, share=rng.uniform(0.1, 0.5))
        elif victim == "home process":
            await home_process_killed(world, share=rng.uniform(0.1, 0.5))
        else:
            await provisioning_process_killed(world)
        return ""
    except KillMissed:
        return "missed"
    except Exception as exc:
        return f"{victim} killed: {exc!r}\n{traceback.format_exc()}"
    finally:
        await asyncio.to_thread(world.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = PostgresServer()
    server.start()
    root = Path(tempfile.mkdtemp(prefix="oma-cluster-soak-"))
    failures = missed = 0
    started = time.monotonic()
    try:
        for seed in range(args.first_seed, args.first_seed + args.runs):
            run_dir = root / f"seed-{seed}"
            run_dir.mkdir()
            t = time.monotonic()
            problem = asyncio.run(one_run(seed, run_dir, server.create_database()))
            verdict = {"": "ok", "missed": "kill missed (the copy had ended), not counted"}.get(problem, "")
            outcome = verdict or f"FAILED (logs in {run_dir}): {problem}"
            print(f"seed {seed} ({victim_of(seed)} killed): {outcome} ({time.monotonic() - t:.1f} s)")
            failures += not verdict
            missed += problem == "missed"
            if verdict:
                shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        server.stop()
    counted = args.runs - missed
    elapsed = time.monotonic() - started
    print(f"{counted - failures} of {counted} runs consistent ({missed} kills missed) in {elapsed:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
