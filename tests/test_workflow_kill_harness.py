"""The workflow kill -9 harness (tests/harness/workflow_kills.py) at a size that fits `make test`: a few seeds whose
plans kill each victim (oma-server, vma-agent, the CloudStack simulator) and one a second time on SQLite, and
oma-server on PostgreSQL.

`python -m tests.harness.workflow_kills --runs 50` (or `OMA_WORKFLOW_KILL_RUNS=50 pytest ...`) is the soak; its
figure is in the README.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.harness.workflow_kills import VICTIMS, Soak, seeds_covering, soak
from tests.pg import PostgresServer

RUNS = int(os.environ.get("OMA_WORKFLOW_KILL_RUNS", "3"))


def report(result: Soak) -> str:
    lines = []
    for outcome in result.failures:
        lines.append(f"{outcome.plan.describe()} (logs in {outcome.kept}):")
        lines += [f"    {p}" for p in outcome.problems]
    return "\n".join(lines)


@pytest.mark.slow
def test_seeded_kills_of_every_victim_end_consistent_sqlite(tmp_path: Path) -> None:
    seeds = seeds_covering(max(RUNS, len(VICTIMS)))
    result = asyncio.run(soak(seeds, tmp_path))
    assert result.failures == [], report(result)
    # The seeds do kill what they say (a harness that kills nothing proves nothing): every victim, one run twice.
    kills = result.kills_by()
    assert all(kills[victim] for victim in VICTIMS), kills
    assert any(len(o.kills) == 2 for o in result.outcomes), [o.kills for o in result.outcomes]


@pytest.mark.slow
@pytest.mark.postgres
def test_seeded_kills_end_consistent_postgresql(tmp_path: Path, postgres: PostgresServer) -> None:
    seeds = seeds_covering(max(1, RUNS // 3), first=1000, victims=("oma-server",))
    result = asyncio.run(soak(seeds, tmp_path, postgres.url()))
    assert result.failures == [], report(result)
    assert all(o.kills for o in result.outcomes)
