"""The simulator's volume snapshots: create (a sparse copy of the volume), revert, delete, list."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from oma_server.cloudstack import sim_files
from oma_server.cloudstack.sim_api import Params, command, filter_rows, list_response, public
from oma_server.cloudstack.sim_errors import ApiError
from oma_server.cloudstack.sim_jobs import Job, submit
from oma_server.cloudstack.sim_state import SimulatorState, new_id, now_iso


def render_snapshot(state: SimulatorState, snap: dict[str, Any]) -> dict[str, Any]:
    return public(snap)


@command("listSnapshots")
def _list_snapshots(state: SimulatorState, p: Params) -> dict[str, Any]:
    rows = [render_snapshot(state, s) for s in state.snapshots.values()]
    rows = filter_rows(rows, p, id="id", name="name", volumeid="volumeid", zoneid="zoneid")
    return list_response(p, "snapshot", rows)


@command("createSnapshot")
def _create_snapshot(state: SimulatorState, p: Params) -> dict[str, Any]:
    vol = p.entity("volumeid", state.volumes)
    if vol["state"] != "Ready":
        raise ApiError(431, f"VolumeId: {vol['id']} is not in Ready state but {vol['state']}. Cannot take snapshot.")
    vm = state.vms.get(vol.get("virtualmachineid") or "")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    name = p.opt("name") or f"{vm['name'] if vm else 'detached'}_{vol['name']}_{stamp}"
    snap_id = new_id()
    snap: dict[str, Any] = {
        "id": snap_id,
        "name": name,
        "volumeid": vol["id"],
        "volumename": vol["name"],
        "volumetype": vol["type"],
        "snapshottype": "MANUAL",
        "intervaltype": "MANUAL",
        "state": "Allocated",
        "created": now_iso(),
        "zoneid": vol["zoneid"],
        "virtualsize": vol["size"],
        "physicalsize": 0,
        "revertable": True,
        "locationtype": "PRIMARY",
        "account": state.account["account"],
        "domain": state.account["domain"],
        "domainid": state.account["domainid"],
        "tags": [],
    }
    state.snapshots[snap_id] = snap

    async def work() -> dict[str, Any]:
        snap["state"] = "BackingUp"
        dst = state.snapshot_file(snap_id)
        await asyncio.to_thread(sim_files.sparse_copy, state.volume_file(vol["id"]), dst)
        snap["physicalsize"] = dst.stat().st_blocks * 512
        snap["state"] = "BackedUp"
        return {"snapshot": render_snapshot(state, snap)}

    def on_error() -> None:
        snap["state"] = "Error"

    return submit(
        state,
        Job(
            "createSnapshot",
            "org.apache.cloudstack.api.command.user.snapshot.CreateSnapshotCmd",
            "Snapshot",
            snap_id,
            work,
            on_error,
            immediate={"id": snap_id},
        ),
    )


@command("revertSnapshot")
def _revert_snapshot(state: SimulatorState, p: Params) -> dict[str, Any]:
    snap = p.entity("id", state.snapshots)

    async def work() -> dict[str, Any]:
        if snap["state"] != "BackedUp":
            raise ApiError(431, f"Snapshot {snap['id']} is not in BackedUp state; it cannot be reverted")
        vol = state.volumes.get(snap["volumeid"])
        if vol is None:
            raise ApiError(431, f"Unable to find volume {snap['volumeid']} of snapshot {snap['id']}: it does not exist")
        vm = state.vms.get(vol.get("virtualmachineid") or "")
        if vm is not None and vm["state"] != "Stopped":
            raise ApiError(431, "The VM the specified disk is attached to is not in the shutdown state.")
        await asyncio.to_thread(sim_files.sparse_copy, state.snapshot_file(snap["id"]), state.volume_file(vol["id"]))
        vol["size"] = snap["virtualsize"]
        return {"snapshot": render_snapshot(state, snap)}

    return submit(
        state,
        Job(
            "revertSnapshot",
            "org.apache.cloudstack.api.command.user.snapshot.RevertSnapshotCmd",
            "Snapshot",
            snap["id"],
            work,
        ),
    )


@command("deleteSnapshot")
def _delete_snapshot(state: SimulatorState, p: Params) -> dict[str, Any]:
    snap = p.entity("id", state.snapshots)

    async def work() -> dict[str, Any]:
        if snap["state"] in ("Allocated", "BackingUp"):
            raise ApiError(431, f"Can't delete snapshot {snap['id']} while it is being created")
        state.snapshots.pop(snap["id"], None)
        with suppress(FileNotFoundError):
            state.snapshot_file(snap["id"]).unlink()
        return {"success": True}

    return submit(
        state,
        Job(
            "deleteSnapshot",
            "org.apache.cloudstack.api.command.user.snapshot.DeleteSnapshotCmd",
            "Snapshot",
            snap["id"],
            work,
        ),
    )
