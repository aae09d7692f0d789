"""The `vma-agent` process: flags, fake-vCenter commands, the local API via grpcurl, clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from oma_server.server import OmaServer
from tests.clients import ca_file
from tests.factories import enroll

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
AGENT = [sys.executable, "-m", "vma_client_stubs.agent.cli"]


def vma(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--oma", "nohostport", "--appliance-id", "a", "--vcenter-dir", "v", "--state-dir", "s"],
        ["run", "--oma", "127.0.0.1:1", "--appliance-id", "a", "--vcenter-dir", "v", "--state-dir", "s"],  # no cred
        ["create-vm", "--vcenter-dir", "v", "--name", "x"],
        # a CA file that cannot be read
        [
            *("run", "--oma", "127.0.0.1:1", "--ca", "/no/ca.crt", "--appliance-id", "a", "--vcenter-dir", "v"),
            *("--state-dir", "s", "--credential-file", "/etc/hostname"),
        ],
        ["guest-write", "--vcenter-dir", "v", "--vm", "x", "--percent", "-1"],
        ["frobnicate"],
    ],
)
def test_bad_flags_are_one_line_and_exit_2(args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VMA_CREDENTIAL"}
    result = vma(*args, env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("vma-agent: error:")


def test_create_list_guest_write(tmp_path: Path) -> None:
    vc = str(tmp_path / "vc")
    created = vma("create-vm", "--vcenter-dir", vc, "--name", "web", "--disk-mib", "4", "--disk-mib", "2")
    assert created.returncode == 0, created.stderr
    listed = json.loads(vma("list", "--vcenter-dir", vc, "--json").stdout)
    assert [v["uuid"] for v in listed] == [created.stdout.strip()]
    assert [d["capacity_bytes"] for d in listed[0]["disks"]] == [4 << 20, 2 << 20]
    wrote = vma("guest-write", "--vcenter-dir", vc, "--vm", "web", "--percent", "5", "--seed", "1")
    assert wrote.returncode == 0 and "disk 2000:" in wrote.stdout
    missing = vma("guest-write", "--vcenter-dir", vc, "--vm", "nope", "--percent", "5")
    assert missing.returncode == 1 and "nope" in missing.stderr


async def test_run_serves_grpcurl_and_stops_on_sigterm(
    oma_server: OmaServer, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    enrolled = await enroll(channel)
    vc = str(tmp_path / "vc")
    assert vma("create-vm", "--vcenter-dir", vc, "--name", "web", "--disk-mib", "4").returncode == 0
    cred = tmp_path / "cred"
    cred.write_text(enrolled.credential)
    proc = await asyncio.create_subprocess_exec(
        *AGENT, "run", "--oma", f"127.0.0.1:{oma_server.port}", "--ca", str(ca_file(oma_server.app.settings.data_dir)),
        "--appliance-id", enrolled.appliance_id,
        "--credential-file", str(cred), "--vcenter-dir", vc, "--state-dir", str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("listening 127.0.0.1:"), line
        address = line.split()[1]

        async def grpcurl(*args: str) -> str:
            p = await asyncio.create_subprocess_exec(
                GRPCURL, "-plaintext", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await p.communicate()
            assert p.returncode == 0, err
            return out.decode()

        services = await grpcurl(address, "list")
        assert "vma.v1.VmaAgentService" in services and "grpc.health.v1.Health" in services
        vms = json.loads(await grpcurl(address, "vma.v1.VmaAgentService/ListVirtualMachines"))
        assert vms["virtual_machines"][0]["name"] == "web"
        for _ in range(100):
            status = json.loads(await grpcurl(address, "vma.v1.VmaAgentService/GetAgentStatus"))
            if status.get("connected"):
                break
            await asyncio.sleep(0.05)
        assert status["connected"] and status["appliance_id"] == enrolled.appliance_id
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
