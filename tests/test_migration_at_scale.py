"""A 50-VM x 2-disk warm migration through an OMA VM that holds 14 data disks runs to the end (issue 20).

The same run as `python -m bench.migration` (bench/migration.py): the real server, the CloudStack simulator over
HTTP seeded with a 14-volume KVM limit, a real nbdkit, the reference agent over a real gRPC stream. Initial and
incremental replication of all 50 VMs at once, then a live failover of all 50 (final syncs queue ahead of the rest).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.migration import migrate

pytestmark = [pytest.mark.slow, pytest.mark.nbd]


@pytest.mark.timeout(600)
async def test_fifty_vms_of_two_disks_through_an_oma_vm_of_fourteen(tmp_path: Path) -> None:
    result = await migrate(tmp_path, vms=50, disks=2, disk_mib=2, slots=14)
    # nbdkit serves a directory of links: adding or removing an export never restarts it, so no job fails (with
    # nbd-server, a job whose appliance connected during a restart for another export failed and was retried)
    assert result["failures"] == []
    assert result["oma_capacity"] == 14
    # never more replicas on the OMA VM than it holds, as CloudStack saw it (sampled) and as the pool counted it
    assert 0 < result["peak_attached"] <= 14 and result["pool_peak"] <= 14
    assert result["jobs_that_waited"] > 50  # 150 jobs for 7 at a time: most queued
    assert result["failed_over_live"] == 50 == result["target_vms_running"]
    assert result["replicas_checked"] == 100  # each byte-identical to its source disk
    assert result["attached_at_end"] == 0
