"""The simulator keeps its world across a restart, as the OMA's tests restart it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from oma_server.cloudstack import device_path
from oma_server.cloudstack.client import CloudStackClient
from oma_server.cloudstack.config import CloudStackSettings
from oma_server.cloudstack.errors import CloudStackUnavailable
from oma_server.cloudstack.models import GIB
from oma_server.cloudstack.simulator import CloudStackSimulator
from tests.harness.victims import CloudStackProcess


async def test_world_survives_restart(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = CloudStackSimulator(state_dir)  # keys generated, then persisted
    await first.start()
    try:
        async with CloudStackClient(first.settings()) as client:
            vol = await client.create_volume("persisted", 2 * GIB)
            await client.attach_volume_to_oma(vol.id)
            first.faults.hang_job("createVolume")
            submitted = await client.request(
                "createVolume",
                name="in-flight",
                zoneid=first.zone_id,
                diskofferingid=(await client.custom_disk_offering()).id,
                size=1,
            )
        keys = (first.api_key, first.secret_key)
        oma_vm, zone = first.oma_vm_id, first.zone_id
    finally:
        await first.stop()
    assert (state_dir / "cloudstack-sim.json").stat().st_mode & 0o077 == 0  # it holds the secret

    second = CloudStackSimulator(state_dir)
    await second.start()
    try:
        assert (second.api_key, second.secret_key) == keys
        assert (second.oma_vm_id, second.zone_id) == (oma_vm, zone)
        async with CloudStackClient(second.settings()) as client:
            again = await client.get_volume(vol.id)
            assert again.virtual_machine_id == oma_vm and again.device_id == 1 and again.state == "Ready"
            assert device_path(second.device_root, vol.id).is_symlink()
            # the job pending at shutdown failed, as CloudStack fails jobs of a restarted management server
            try:
                await client.wait_for_job(submitted["jobid"], command="createVolume")
            except CloudStackUnavailable as e:
                assert "restarted" in (e.errortext or "")
            else:
                raise AssertionError("the in-flight job should have failed")
    finally:
        await second.stop()


async def test_seed_file(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "zone": {"id": "11111111-2222-3333-4444-555555555555", "name": "lab-zone"},
                "networks": [{"name": "lab-net", "cidr": "172.16.0.0/24", "gateway": "172.16.0.1"}],
                "oma_vm": {
                    "name": "oma",
                    "service_offering": "Small Instance",
                    "template": "Ubuntu 22.04",
                    "network": "lab-net",
                    "ip": "172.16.0.5",
                },
            }
        )
    )
    async with CloudStackSimulator(tmp_path / "s", seed_config=seed) as sim:
        client = CloudStackClient(sim.settings())
        try:
            assert [z.name for z in await client.list_zones()] == ["lab-zone"]
            assert sim.zone_id == "11111111-2222-3333-4444-555555555555"
            oma = await client.get_vm(sim.oma_vm_id)
            assert oma.state == "Running" and oma.nics[0].ip_address == "172.16.0.5"
            assert oma.root_volume is not None and oma.root_volume.state == "Ready"
        finally:
            await client.close()


async def test_what_it_answered_survives_a_sigkill(tmp_path: Path) -> None:
    """CloudStack commits before it answers: a volume created and attached, killed with SIGKILL the moment the
    answers arrived, is there and attached after the restart. Found by the workflow kill harness: the simulator wrote
    its state up to 0.2 s behind its answers, so a killed one forgot a detach and a destroy the OMA had seen succeed
    (and the OMA was left with a test VM it believed destroyed)."""
    sim = CloudStackProcess(tmp_path / "state", tmp_path / "sim.log")
    await asyncio.to_thread(sim.start)
    try:
        settings = CloudStackSettings.from_env(
            sim.url, sim.oma_environment(), retry_base_delay_s=0.05, retry_max_delay_s=0.2
        )
        async with CloudStackClient(settings) as client:
            volume = await client.create_volume("durable", GIB)
            attached = await client.attach_volume_to_oma(volume.id)
            await asyncio.to_thread(sim.kill)  # at once: no time for a write behind the answers
            await asyncio.to_thread(sim.start)
            again = await client.get_volume(volume.id)
        assert again.virtual_machine_id == sim.oma_vm_id == attached.virtual_machine_id
        assert again.device_id == attached.device_id
    finally:
        await asyncio.to_thread(sim.stop)
