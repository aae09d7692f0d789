"""The stream fault harness (tests/harness/stream_faults.py) at a size that fits `make test`.

`OMA_STREAM_FAULT_RUNS=1000 pytest tests/test_stream_fault_harness.py` or `python -m tests.harness.stream_faults
--runs 1000` is the soak; its figure is in the README.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.harness.stream_faults import run_harness
from tests.pg import PostgresServer

RUNS = int(os.environ.get("OMA_STREAM_FAULT_RUNS", "12"))


@pytest.mark.slow
def test_seeded_faulty_vma_converges_on_the_fault_free_run_sqlite(tmp_path: Path) -> None:
    harness = asyncio.run(run_harness(tmp_path, range(RUNS)))
    assert harness.failures == []
    t = harness.totals
    # The seeds chosen do exercise every fault (a harness that injects nothing proves nothing).
    assert t.cuts and t.kills and t.spoiled and t.duplicates and t.stale and t.swapped and t.watchers


@pytest.mark.slow
@pytest.mark.postgres
def test_seeded_faulty_vma_converges_on_the_fault_free_run_postgresql(tmp_path: Path, postgres: PostgresServer) -> None:
    harness = asyncio.run(run_harness(tmp_path, range(100, 100 + max(3, RUNS // 4)), postgres.create_database()))
    assert harness.failures == []
    assert harness.totals.cuts and harness.totals.spoiled
