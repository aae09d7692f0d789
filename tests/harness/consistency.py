"""What a run of the workflow harness must end with, checked from outside through interfaces only: the OMA's API,
CloudStack's API (the simulator, through the `cs` client), the NBD server (nbdinfo --list), the VMA agent's CLI, and
the files behind the simulator's volumes and the fake vCenter's disks.

- every job final, none in a transient status; the VM ready for failover with no active job; the source powered on
- every replica byte-identical to its source disk (the source is unchanged since the last completed sync)
- CloudStack holds exactly what the OMA records: one volume per disk, attached where the OMA says, no other volume
  (the OMA VM's own ROOT excepted), no snapshot, no VM but the OMA VM
- the NBD server serves every export the OMA records as active and nothing else that reaches data (an entry it keeps
  dormant for a detached replica, recorded removed, has no device behind it)
- no VMware snapshot left on the source VM
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cs import CloudStack

from oma.v1 import storage_pb2, storage_pb2_grpc
from oma_server.nbd.names import EXPORT_NAME_PREFIX
from tests.conftest import VENV_BIN
from tests.harness.operator import Operator, View, failover_kind, failover_status, replication_status
from vma_client_stubs.agent.extents import allocated_extents
from vma_client_stubs.agent.vcenter import FakeVCenter

CHUNK = 4 << 20
REPLICATION_FINAL = ("completed", "failed", "cancelled")
FAILOVER_FINAL = ("completed", "failed")


@dataclass(frozen=True)
class CloudStackView:
    volumes: list[dict[str, Any]]
    snapshots: list[dict[str, Any]]
    vms: list[dict[str, Any]]


def cloudstack_api(url: str, key: str, secret: str) -> CloudStack:
    return CloudStack(endpoint=url, key=key, secret=secret, timeout=10)


def cloudstack_view(url: str, key: str, secret: str) -> CloudStackView:
    api = cloudstack_api(url, key, secret)
    return CloudStackView(
        volumes=api.listVolumes(listall=True, fetch_list=True),
        snapshots=api.listSnapshots(listall=True, fetch_list=True),
        vms=api.listVirtualMachines(listall=True, fetch_list=True),
    )


def served_exports(nbd_port: int) -> set[str] | None:
    """Names of the replica exports the NBD server lists (None when nothing listens: no server runs); the
    server's own exports (a probe) are not the OMA's records."""
    out = subprocess.run(
        ["nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{nbd_port}"], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        if "Connection refused" in out.stderr:
            return None
        raise AssertionError(f"nbdinfo --list failed: {out.stderr.strip()}")
    names = {e["export-name"] for e in json.loads(out.stdout).get("exports", [])}
    return {n for n in names if n.startswith(EXPORT_NAME_PREFIX)}


def source_vm(vcenter_dir: Path, name: str) -> dict[str, Any]:
    """The source VM as the agent's CLI lists it: uuid, power state, disks with their image paths."""
    out = subprocess.run(
        [str(VENV_BIN / "vma-agent"), "list", "--vcenter-dir", str(vcenter_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return next(vm for vm in json.loads(out.stdout) if vm["name"] == name)


def first_difference(source: Path, replica: Path) -> str:
    """'' when the replica holds the source's bytes and then only zeros (CloudStack rounds sizes up to GiB)."""
    if not replica.exists():
        return f"replica file {replica} does not exist"
    size = source.stat().st_size
    with open(source, "rb") as a, open(replica, "rb") as b:
        done = 0
        while done < size:
            want = a.read(min(CHUNK, size - done))
            got = b.read(len(want))
            if got != want:
                at = next((i for i, (x, y) in enumerate(zip(want, got, strict=False)) if x != y), len(got))
                return f"differs from its source at byte {done + at} of {size}"
            done += len(want)
        for offset, length in allocated_extents(replica):  # past the source's end; holes read as zeros
            start, stop = max(offset, size), offset + length
            b.seek(start)
            while start < stop:
                chunk = b.read(min(CHUNK, stop - start))
                if chunk.count(0) != len(chunk):
                    return f"holds non-zero bytes after the source's end, in [{start}, {start + len(chunk)})"
                start += len(chunk)
    return ""


@dataclass
class World:
    """Where to look."""

    operator: Operator
    vm_name: str
    vcenter_dir: Path
    cloudstack_url: str
    cloudstack_keys: tuple[str, str]
    cloudstack_state_dir: Path
    oma_vm_id: str
    nbd_port: int


async def settled(world: World, within_s: float = 20.0) -> list[str]:
    """`check` until it finds nothing or `within_s` passes; what it found last. Work goes on after a job is final
    (its replicas are detached and their exports retired afterwards), so the end is consistent when the world
    gets there by itself within bounded time."""
    deadline = time.monotonic() + within_s
    while True:
        problems = await check(world)
        if not problems or time.monotonic() > deadline:
            return problems
        await asyncio.sleep(0.5)


async def check(world: World) -> list[str]:
    """Everything that differs from a consistent end (empty: consistent)."""
    problems: list[str] = []
    view = await world.operator.view()
    problems += _jobs_and_vm(view)
    source = await asyncio.to_thread(source_vm, world.vcenter_dir, world.vm_name)
    if source["power_state"] != "on":
        problems.append(f"the source VM is powered {source['power_state']} after the rollback")
    stub = storage_pb2_grpc.VolumeServiceStub(world.operator.channel)
    volumes = (
        await world.operator.ask(
            stub.ListVolumes, storage_pb2.ListVolumesRequest(vm_context_id=world.operator.vm_id, page_size=1000)
        )
    ).volumes
    live = [v for v in volumes if v.state != storage_pb2.VOLUME_STATE_DELETED]
    problems += await asyncio.to_thread(_replicas, world, view, source, live)
    cloud = await asyncio.to_thread(cloudstack_view, world.cloudstack_url, *world.cloudstack_keys)
    problems += _cloudstack(world, cloud, live)
    exports_stub = storage_pb2_grpc.NbdExportServiceStub(world.operator.channel)
    exports = (
        await world.operator.ask(exports_stub.ListNbdExports, storage_pb2.ListNbdExportsRequest(page_size=1000))
    ).nbd_exports
    problems += await asyncio.to_thread(_exports, world, exports, live)
    left = await asyncio.to_thread(FakeVCenter(world.vcenter_dir).list_snapshots, source["uuid"])
    if left:
        problems.append(f"VMware snapshot(s) left on the source VM: {left}")
    return problems


def _jobs_and_vm(view: View) -> list[str]:
    problems = []
    for job in view.replications:
        if replication_status(job.status) not in REPLICATION_FINAL:
            problems.append(f"replication job {job.id} stuck in {replication_status(job.status)}")
    for failover in view.failovers:
        if failover_status(failover.status) not in FAILOVER_FINAL:
            problems.append(
                f"{failover_kind(failover.kind)} job {failover.id} stuck in {failover_status(failover.status)} "
                f"at {failover.current_step}"
            )
    if view.status != "ready_for_failover" or view.vm.active_job_id:
        problems.append(f"the VM is {view.status} (active job {view.vm.active_job_id or '-'}), not ready_for_failover")
    return problems


def _replicas(world: World, view: View, source: dict[str, Any], live: list[storage_pb2.Volume]) -> list[str]:
    problems = []
    by_disk: dict[str, list[storage_pb2.Volume]] = {}
    for volume in live:
        by_disk.setdefault(volume.disk_id, []).append(volume)
    images = {d["key"]: Path(d["path"]) for d in source["disks"]}
    for disk in view.vm.disks:
        replicas = by_disk.get(disk.id, [])
        if len(replicas) != 1:
            problems.append(f"disk {disk.key} has {len(replicas)} live replica volumes: {[v.id for v in replicas]}")
            continue
        replica = replicas[0]
        if not replica.cloudstack_id:
            problems.append(f"disk {disk.key}: replica volume {replica.id} has no CloudStack volume")
            continue
        image = world.cloudstack_state_dir / "volumes" / f"{replica.cloudstack_id}.img"
        difference = first_difference(images[disk.key], image)
        if difference:
            problems.append(f"disk {disk.key}: replica {replica.cloudstack_id} {difference}")
    return problems


def _cloudstack(world: World, cloud: CloudStackView, live: list[storage_pb2.Volume]) -> list[str]:
    problems = []
    oma_root = {v["id"] for v in cloud.volumes if v.get("virtualmachineid") == world.oma_vm_id and v["type"] == "ROOT"}
    recorded = {v.cloudstack_id: v for v in live if v.cloudstack_id}
    in_cloud = {v["id"]: v for v in cloud.volumes}
    orphans = sorted(set(in_cloud) - set(recorded) - oma_root)
    if orphans:
        where = {i: in_cloud[i].get("virtualmachineid") or "detached" for i in orphans}
        problems.append("orphan CloudStack volume(s): " + _listed(in_cloud[i] | {"state": where[i]} for i in orphans))
    missing = sorted(set(recorded) - set(in_cloud))
    if missing:
        problems.append(f"volume(s) the OMA records but CloudStack does not have: {missing}")
    for cs_id, volume in recorded.items():
        actual = in_cloud.get(cs_id, {}).get("virtualmachineid", "")
        if cs_id in in_cloud and actual != volume.attached_vm_id:
            problems.append(
                f"volume {cs_id}: the OMA records it attached to {volume.attached_vm_id or 'nothing'}, "
                f"CloudStack to {actual or 'nothing'}"
            )
    if cloud.snapshots:
        problems.append("orphan CloudStack snapshot(s): " + _listed(cloud.snapshots))
    vms = [vm for vm in cloud.vms if vm["id"] != world.oma_vm_id]
    if vms:
        problems.append("orphan CloudStack VM(s): " + _listed(vms))
    return problems


def _listed(rows: Iterable[dict[str, Any]]) -> str:
    return ", ".join(f"{r['id']} ({r['name']}, {r['state']})" for r in rows)


def _exports(world: World, exports: list[storage_pb2.NbdExport], live: list[storage_pb2.Volume]) -> list[str]:
    """The NBD server serves every export the OMA records active, and nothing else that can reach data: a served name
    recorded `removed` is a dormant entry (its replica is detached, so the device path behind it is gone)."""
    problems = []
    recorded = {e.name: e for e in exports}
    active = {n for n, e in recorded.items() if e.state == storage_pb2.NBD_EXPORT_STATE_ACTIVE}
    removed = {n for n, e in recorded.items() if e.state == storage_pb2.NBD_EXPORT_STATE_REMOVED}
    unsettled = sorted(
        f"{n} ({storage_pb2.NbdExportState.Name(recorded[n].state)})" for n in set(recorded) - active - removed
    )
    if unsettled:
        problems.append(f"export(s) neither active nor removed: {unsettled}")
    served = served_exports(world.nbd_port)
    if served is None:
        if active:
            problems.append(f"the OMA records active exports {sorted(active)} but no NBD server listens")
        return problems
    if active - served:
        problems.append(
            f"export(s) the OMA records active but the NBD server does not serve: {sorted(active - served)}"
        )
    if served - active - removed:
        problems.append(
            f"orphan export(s) the NBD server serves and the OMA does not record: {sorted(served - active - removed)}"
        )
    for name in sorted(served & removed):
        if Path(recorded[name].device_path).exists():
            problems.append(
                f"export {name} is recorded removed but the NBD server serves it with its device "
                f"{recorded[name].device_path} present"
            )
    by_volume = {v.id: v for v in live}
    for name in sorted(active):
        volume = by_volume.get(recorded[name].volume_id)
        if volume is None:
            problems.append(f"export {name} serves volume {recorded[name].volume_id}, which is not a live replica")
        elif volume.attached_vm_id != world.oma_vm_id:
            problems.append(f"export {name} serves volume {volume.cloudstack_id}, which is not attached to the OMA")
    return problems
