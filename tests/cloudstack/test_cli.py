"""`oma-cloudstack-sim` as a process, driven by the `cs` package's own command-line client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def _sim_command() -> list[str]:
    script = VENV_BIN / "oma-cloudstack-sim"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "oma_server.cloudstack.simulator_cli"]


def _cs_command() -> list[str]:
    script = VENV_BIN / "cs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cs"]


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [*_sim_command(), "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        env = dict(item.split("=", 1) for item in first.split())
        assert set(env) == {"CLOUDSTACK_ENDPOINT", "CLOUDSTACK_KEY", "CLOUDSTACK_SECRET"}, first
        second = proc.stdout.readline()  # what `oma-server --cloudstack URL` needs besides
        oma = dict(item.split("=", 1) for item in second.split())
        assert set(oma) == {"OMA_CLOUDSTACK_ZONE", "OMA_CLOUDSTACK_OMA_VM_ID", "DEVICE_ROOT", "SYS_ROOT"}, second
        assert Path(oma["DEVICE_ROOT"]).is_dir() and Path(oma["SYS_ROOT"]).is_dir(), second
        env["_pid"] = str(proc.pid)
        yield env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert rc == 0, proc.stderr.read() if proc.stderr else rc


def _cs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSTACK_")}
    full_env.update({k: v for k, v in env.items() if k.startswith("CLOUDSTACK_")})
    full_env["HOME"] = env.get("HOME", full_env.get("HOME", "/tmp"))
    return subprocess.run([*_cs_command(), *args], env=full_env, capture_output=True, text=True, timeout=30)


def test_cs_cli_lists_zones_and_runs_async_jobs(sim_process: dict[str, str]) -> None:
    zones = _cs(sim_process, "listZones")
    assert zones.returncode == 0, zones.stderr
    body = json.loads(zones.stdout)
    assert body["count"] == 1 and body["zone"][0]["name"] == "sim-zone-1"
    zone_id = body["zone"][0]["id"]

    offerings = json.loads(_cs(sim_process, "listDiskOfferings").stdout)["diskoffering"]
    custom = next(o for o in offerings if o["iscustomized"])
    # an async command: cs polls queryAsyncJobResult itself and prints the job result
    created = _cs(
        sim_process, "createVolume", "name=cli vol", f"zoneid={zone_id}", f"diskofferingid={custom['id']}", "size=2"
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["volume"]["size"] == 2 * 1024**3

    posted = _cs(sim_process, "--post", "listVolumes", "name=cli vol")
    assert posted.returncode == 0, posted.stderr
    assert json.loads(posted.stdout)["count"] == 1


def test_cs_cli_with_wrong_key_gets_401(sim_process: dict[str, str]) -> None:
    result = _cs({**sim_process, "CLOUDSTACK_SECRET": "wrong"}, "listZones")
    assert result.returncode != 0
    assert "401" in result.stderr
    assert json.loads(result.stdout)["listzonesresponse"]["errorcode"] == 401
    result = _cs({**sim_process, "CLOUDSTACK_KEY": "nobody"}, "listZones")
    assert result.returncode != 0 and "401" in result.stderr


def test_cs_cli_reaches_the_simulator_through_the_config_file_it_writes(
    sim_process: dict[str, str], tmp_path: Path
) -> None:
    """What `oma-server` (embedded simulator) logs: CLOUDSTACK_CONFIG=<state dir>/cloudstack.ini cs listZones."""
    ini = tmp_path / "state" / "cloudstack.ini"
    assert ini.stat().st_mode & 0o777 == 0o600  # it holds the secret key
    text = ini.read_text()
    assert f"endpoint = {sim_process['CLOUDSTACK_ENDPOINT']}" in text and sim_process["CLOUDSTACK_SECRET"] in text
    zones = _cs({"CLOUDSTACK_CONFIG": str(ini), "HOME": str(tmp_path)}, "listZones")
    assert zones.returncode == 0, zones.stderr
    assert json.loads(zones.stdout)["zone"][0]["name"] == "sim-zone-1"


def test_sim_cli_bad_flags_exit_2(tmp_path: Path) -> None:
    bad = subprocess.run(
        [*_sim_command(), "--listen", "nonsense", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "listen" in bad.stderr
    missing = subprocess.run(_sim_command(), capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "--state-dir" in missing.stderr
