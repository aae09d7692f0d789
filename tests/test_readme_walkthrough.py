"""The README's quick start, run as written: every fenced `sh` block of the walkthrough, in order, in one bash.

Real processes only — `oma-server` (SQLite, embedded CloudStack simulator, nbdkit), `vma-agent`, `omactl`, `cs` —
started by the README's own commands. The test sets only what the walkthrough's first block reads: `WORK` (the
directory), `OMA_PORT`, `APPLIANCE_PORT` and `NBD_PORT` (free ports; the suite holds the defaults). Each block must
succeed (`set -euo pipefail`); after each, the test records the VM and its jobs as `omactl --json` shows them and
checks the VM's status and its last completed replication job against what that step of the walkthrough promises.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from oma_server.ports import free_port
from tests.conftest import REPO, VENV_BIN

pytestmark = [pytest.mark.nbd, pytest.mark.slow]

BEGIN = "<!-- walkthrough:"
END = "<!-- walkthrough end -->"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
VM = "web-01"


@dataclass(frozen=True)
class After:
    """What holds after a block: whether the OMA answers, the VM's status (None: not registered) and the kind of its
    last completed replication job."""

    status: str | None = None
    last_completed: str = ""
    serving: bool = True


# One entry per block of the walkthrough, in order (README.md "Quick start").
EXPECTED = [
    After(serving=False),  # 1 where things go
    After(),  # 2 oma-server
    After(),  # 3 enroll, start the agent
    After("discovered"),  # 4 discover and register
    After("ready_for_failover", "initial"),  # 5 initial replication
    After("ready_for_failover", "initial"),  # 6 cloud inventory, network mapping
    After("ready_for_failover", "initial"),  # 7 preflight
    After("failed_over_test", "initial"),  # 8 test failover
    After("ready_for_failover", "initial"),  # 9 cleanup
    After("ready_for_failover", "incremental"),  # 10 incremental
    After("failed_over_live", "final"),  # 11 live failover with its final sync
    After("ready_for_failover", "final"),  # 12 rollback, source powered on
    After("failed_over_live", "final"),  # 13 the second live failover, a new final sync
    After(serving=False),  # 14 stop
]


def walkthrough_blocks(readme: str) -> list[str]:
    start = readme.index(BEGIN)
    end = readme.index(END, start)
    return BLOCK.findall(readme[start:end])


def script(blocks: list[str], checks: Path) -> str:
    """The blocks as one bash script; after each, a marker and what omactl shows (the test's own lines)."""
    lines = [
        "set -euo pipefail",
        # background processes a failed run leaves are stopped (the README's last block stops them otherwise)
        "trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT",
        "__after() {",
        f'  omactl --json vms list > "{checks}/vms-$1.json" 2>/dev/null || rm -f "{checks}/vms-$1.json"',
        f'  omactl --json jobs list > "{checks}/jobs-$1.json" 2>/dev/null || rm -f "{checks}/jobs-$1.json"',
        f'  omactl --json network-map list > "{checks}/maps-$1.json" 2>/dev/null || rm -f "{checks}/maps-$1.json"',
        '  echo "@@ block $1 done"',
        "}",
    ]
    for i, block in enumerate(blocks, 1):
        lines += [f'echo "@@ block {i}"', block.rstrip("\n"), f"__after {i}"]
    return "\n".join(lines) + "\n"


def read_json(path: Path) -> list[dict[str, object]] | None:
    return json.loads(path.read_text()) if path.exists() else None  # type: ignore[no-any-return]


def label(value: object, prefix: str) -> str:
    return str(value).removeprefix(prefix).lower()


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = walkthrough_blocks((REPO / "README.md").read_text())
    assert len(blocks) == len(EXPECTED), f"the walkthrough has {len(blocks)} blocks: update EXPECTED with it"
    checks = tmp_path / "checks"
    checks.mkdir()
    path = tmp_path / "walkthrough.sh"
    path.write_text(script(blocks, checks))
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMA_", "CLOUDSTACK_", "VMA_")) and k != "COLUMNS"}
    env.update(
        WORK=str(work),
        OMA_PORT=str(free_port()),
        NBD_PORT=str(free_port()),
        APPLIANCE_PORT=str(free_port()),
        HOME=str(tmp_path),  # no ~/.cloudstack.ini of the machine's user
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",  # the README prepends $PWD/.venv/bin: the same in `make test`
    )
    log = tmp_path / "walkthrough.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", str(path)], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:  # timed out: stop the whole session the walkthrough started
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
    output = log.read_text(errors="replace")
    done = re.findall(r"^@@ block (\d+) done$", output, re.MULTILINE)
    server_log = work / "oma-server.log"
    tail = server_log.read_text(errors="replace")[-3000:] if server_log.exists() else ""
    assert rc == 0, f"block {len(done) + 1} failed (exit {rc}):\n{output[-6000:]}\n--- oma-server.log ---\n{tail}"
    assert done == [str(i) for i in range(1, len(blocks) + 1)]

    completed_finals: list[str] = []
    for i, expected in enumerate(EXPECTED, 1):
        vms = read_json(checks / f"vms-{i}.json")
        jobs = read_json(checks / f"jobs-{i}.json")
        if not expected.serving:
            assert vms is None, f"after block {i}: an OMA answers"
            continue
        assert vms is not None and jobs is not None, f"omactl did not answer after block {i}"
        mine = [vm for vm in vms if vm["name"] == VM]
        if expected.status is None:
            assert mine == [], f"after block {i}: {mine}"
            continue
        [vm] = mine
        assert label(vm["status"], "VM_CONTEXT_STATUS_") == expected.status, f"after block {i}: {vm['status']}"
        assert vm["active_job_id"] == "", f"after block {i}: a job is still active"
        replications = [j for j in jobs if str(j["kind"]).startswith("REPLICATION_JOB_KIND_")]
        completed = [j for j in replications if j["status"] == "REPLICATION_JOB_STATUS_COMPLETED"]
        if not expected.last_completed:
            assert completed == [] and vm["last_completed_job_id"] == "", f"after block {i}"
            continue
        assert completed, f"after block {i}: no completed replication"
        newest = completed[0]  # newest first
        assert label(newest["kind"], "REPLICATION_JOB_KIND_") == expected.last_completed, f"after block {i}"
        assert vm["last_completed_job_id"] == newest["id"], f"after block {i}"
        if expected.last_completed == "final" and newest["id"] not in completed_finals:
            completed_finals.append(str(newest["id"]))
        unfinished = [(j["id"], j["status"]) for j in jobs if not str(j["status"]).endswith("_STATUS_COMPLETED")]
        assert unfinished == [], f"after block {i}: jobs that did not complete"
    assert len(completed_finals) == 2, "each live failover has its own final sync"

    # the network was mapped by its name to the network `omactl cloud networks` listed; cs reached the simulator
    [listed] = re.findall(r"^(\S+)\s+guest-net-1\s", output, re.MULTILINE)
    maps = read_json(checks / f"maps-{len(EXPECTED) - 1}.json")
    assert maps is not None
    assert [(m["source_network"], m["target_network_id"]) for m in maps] == [("VM Network", listed)]
    [zone] = re.findall(r"^(\S+)\s+sim-zone-1\s", output, re.MULTILINE)  # omactl cloud zones
    assert f'"id": "{zone}"' in output  # cs listZones, with the endpoint and keys the simulator wrote
    ini = work / "oma" / "cloudstack" / "cloudstack.ini"
    assert f"CLOUDSTACK_CONFIG={ini} cs listZones" in server_log.read_text()  # where oma-server says they are
    assert (work / "vma-01.join").stat().st_mode & 0o777 == 0o600
    assert (work / "vma-01" / "appliance.key").stat().st_mode & 0o777 == 0o600
    assert (
        "dialing 127.0.0.1:" in (work / "vma-agent.log").read_text()
        and "mutual TLS" in (work / "vma-agent.log").read_text()
    )
