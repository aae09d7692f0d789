"""The libnbd copier against a real nbd-server export: full, incremental, resume and cancel."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.agent.helpers import same_bytes
from tests.agent.nbd import NbdServer
from vma_client_stubs.agent.copier import (
    CopyCancelled,
    CopyProgress,
    DiskCopier,
    InvalidResumeToken,
    Plan,
    ResumePoint,
    TargetUnreachable,
)
from vma_client_stubs.agent.extents import allocated_extents, total
from vma_client_stubs.agent.vcenter import FakeVCenter

MIB = 1 << 20
SIZE = 32 * MIB


@pytest.fixture
def source(vcenter: FakeVCenter) -> tuple[FakeVCenter, str]:
    vm = vcenter.create_vm("src", [SIZE], seed=21)
    return vcenter, vm.uuid


def full_plan(path: Path, fresh: bool = True) -> Plan:
    return Plan.full(allocated_extents(path), os.path.getsize(path), fresh_target=fresh)


def test_full_then_incremental_copy_is_byte_identical(source: tuple[FakeVCenter, str], nbd_server: NbdServer) -> None:
    vcenter, uuid = source
    uri = nbd_server.add("disk", SIZE)
    nbd_server.start()
    snap = vcenter.create_snapshot(uuid)
    path = snap.disk(2000).path
    plan = full_plan(path)
    seen: list[CopyProgress] = []
    result = DiskCopier(path, uri, plan, fresh_target=True, on_progress=seen.append).run()
    assert same_bytes(path, nbd_server.exports["disk"])
    assert result.bytes_done == plan.total_bytes == total(allocated_extents(path))
    assert result.bytes_written + result.bytes_skipped == plan.total_bytes
    assert result.bytes_skipped > 0  # the allocated all-zero regions were not sent
    assert result.flushed and seen[-1].bytes_done == plan.total_bytes

    vcenter.guest_write(uuid, 5, seed=1)
    snap2 = vcenter.create_snapshot(uuid)
    changed = vcenter.query_changed_areas(snap2, 2000, snap.disk(2000).change_id)
    inc = DiskCopier(snap2.disk(2000).path, uri, Plan.incremental(changed), fresh_target=False).run()
    assert same_bytes(snap2.disk(2000).path, nbd_server.exports["disk"])
    assert inc.bytes_written + inc.bytes_zeroed == total(changed)
    assert inc.bytes_zeroed > 0  # blocks the guest zeroed were zeroed on the target, not skipped


def test_full_copy_into_a_used_target_zeroes_holes(source: tuple[FakeVCenter, str], nbd_server: NbdServer) -> None:
    vcenter, uuid = source
    uri = nbd_server.add("disk", SIZE)
    nbd_server.start()
    nbd_server.exports["disk"].write_bytes(b"\xaa" * SIZE)  # stale data everywhere
    path = vcenter.create_snapshot(uuid).disk(2000).path
    result = DiskCopier(path, uri, full_plan(path, fresh=False), fresh_target=False).run()
    assert same_bytes(path, nbd_server.exports["disk"])
    assert result.bytes_zeroed >= SIZE - total(allocated_extents(path))


@pytest.mark.parametrize("connections", [1, 4])
def test_resume_writes_only_the_rest(source: tuple[FakeVCenter, str], nbd_server: NbdServer, connections: int) -> None:
    vcenter, uuid = source
    uri = nbd_server.add("disk", SIZE)
    nbd_server.start()
    path = vcenter.create_snapshot(uuid).disk(2000).path
    plan = full_plan(path)
    copier: DiskCopier | None = None

    class CancelPast8MiB(threading.Event):
        """Sets itself the first time a worker asks for a chunk once 8 MiB of the plan were sent or skipped (no
        timing involved: after the drain every chunk taken has completed, so the resume point is at least that)."""

        def is_set(self) -> bool:
            if copier is not None:
                p = copier.progress()
                if p.bytes_written + p.bytes_skipped >= 8 * MIB:
                    self.set()
            return super().is_set()

    copier = DiskCopier(
        path, uri, plan, fresh_target=True, cancel=CancelPast8MiB(), chunk_size=256 * 1024, window=2,
        connections=connections,        checkpoint_interval_s=0,
    )  # fmt: skip
    with pytest.raises(CopyCancelled) as stopped:
        copier.run()
    first = stopped.value.result
    point = ResumePoint.decode(first.resume_token)
    assert 8 * MIB <= point.done < plan.total_bytes
    assert point.done == first.bytes_done  # a cancelled copy's resume point is exact (drained and flushed)
    assert first.extra["connections"] == connections  # nbd-server advertises multi-conn

    rest = DiskCopier(path, uri, plan, fresh_target=True, resume=point).run()
    assert same_bytes(path, nbd_server.exports["disk"])
    assert rest.resume_from == point.done
    assert rest.bytes_written + rest.bytes_skipped == plan.total_bytes - point.done


def test_resume_token_of_another_plan_is_refused(source: tuple[FakeVCenter, str]) -> None:
    vcenter, uuid = source
    path = vcenter.create_snapshot(uuid).disk(2000).path
    plan = full_plan(path)
    other = Plan.incremental([(0, 4096)])
    with pytest.raises(InvalidResumeToken):
        ResumePoint(other.plan_id, 0, 0, 0).check(plan)
    with pytest.raises(InvalidResumeToken):
        ResumePoint.decode("v1.garbage!")
    token = ResumePoint(plan.plan_id, 1, 4096, plan.segments[0].length + 4096).encode()
    ResumePoint.decode(token).check(plan)


def test_unreachable_target(source: tuple[FakeVCenter, str], nbd_server: NbdServer) -> None:
    vcenter, uuid = source
    path = vcenter.create_snapshot(uuid).disk(2000).path
    copier = DiskCopier(path, nbd_server.uri("nothing"), full_plan(path), fresh_target=True, connect_deadline_s=0.5)
    with pytest.raises(TargetUnreachable, match=r"attempt\(s\) in 0.5s"):  # tried again until the deadline
        copier.run()
