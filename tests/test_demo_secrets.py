"""`make demo` end to end (issue #14, "secrets never leak"): the whole demo runs with TLS, tokens and an appliance
joined by certificate, and afterwards not one secret it handed out — the initial admin token, the viewer token it
made for /metrics, the appliance's join token and private key, the CA's and the servers' private keys — appears in
any log, in its own output, or in the database (which keeps only hashes); every secret file is mode 0600."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def private_key_body(pem: bytes) -> list[bytes]:
    """The base64 lines of a PEM key (what a leak would show), without its BEGIN/END armour."""
    return [line for line in pem.splitlines() if line and not line.startswith(b"-----")]


def test_a_whole_demo_run_leaks_no_secret(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    env = {**os.environ, "OMA_DEMO_DIR": str(demo_dir), "COLUMNS": "120"}
    env.pop("OMA_DEMO_HTTP_PORT", None)
    run = subprocess.run(
        [sys.executable, "-m", "oma_server.demo"], cwd=REPO, env=env, capture_output=True, timeout=600, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output.decode(errors="replace")[-3000:]
    assert b"demo OK" in run.stdout

    data_dir = demo_dir / "oma"
    secret_files = {
        "initial admin token": data_dir / "admin.token",
        "viewer token for /metrics": demo_dir / "prometheus.token",
        "appliance join file": demo_dir / "vma.join",
        "appliance key": demo_dir / "vma-identity" / "appliance.key",
        "CA key": data_dir / "tls" / "ca.key",
        "server key": data_dir / "tls" / "server.key",
        "appliance port's server key": data_dir / "tls" / "appliance-server.key",
        "NBD server key": data_dir / "nbd" / "tls" / "server-key.pem",
        "NBD probe key": data_dir / "nbd" / "probe" / "probe.key",
        "appliance key for NBD": demo_dir / "vma-identity" / "nbd" / "client-key.pem",
    }
    # An EC private key's PEM carries its public point too; a line of it that is also in a (public) certificate the
    # database keeps is no secret, and is left out. What remains of each key still covers its private scalar.
    public = b"".join(p.read_bytes() for pattern in ("*.crt", "*-cert.pem") for p in demo_dir.rglob(pattern))
    secrets: dict[str, list[bytes]] = {}
    for what, path in secret_files.items():
        assert path.exists(), f"the demo wrote no {what} at {path}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{what} ({path}) is not 0600"
        content = path.read_bytes()
        if path.name.endswith(".join"):  # JSON: only its token is secret (the address and CA pin are not)
            secrets[what] = [json.loads(content)["join_token"].encode()]
        else:
            pieces = private_key_body(content) if b"PRIVATE KEY" in content else [content.strip()]
            secrets[what] = [piece for piece in pieces if piece not in public]
            assert secrets[what], what
        assert all(len(s) >= 32 for s in secrets[what]), what

    looked_at = {"the demo's own output": output}
    for log in demo_dir.rglob("*.log"):
        looked_at[str(log.relative_to(demo_dir))] = log.read_bytes()
    for database in data_dir.glob("*.db*"):
        looked_at[str(database.relative_to(demo_dir))] = database.read_bytes()
    assert {"oma-server.log", "vma-agent.log"} <= set(looked_at), sorted(looked_at)
    assert any(name.endswith(".db") for name in looked_at), "the SQLite database was looked at"

    leaks = [
        f"{what} in {where}"
        for what, pieces in secrets.items()
        for where, text in looked_at.items()
        if any(piece in text for piece in pieces)
    ]
    assert leaks == []
