"""`make demo`: the main job on the embedded defaults.

Until replication lands this starts `oma-server` on SQLite, shows its health and service list through the real
grpcurl binary, and stops it with SIGTERM. Exit status is non-zero if any step fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: oma-server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("demo: oma-server did not start listening in time")


def _step(title: str, *cmd: str) -> str:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"demo: {title} failed (exit {out.returncode})")
    return out.stdout


def main() -> int:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="oma-demo-") as data_dir:
        env = {**os.environ, "OMA_NBD_LISTEN": f"127.0.0.1:{_free_port()}"}
        print(f"demo: starting oma-server on {address} (SQLite in {data_dir})", flush=True)
        proc = subprocess.Popen([str(BIN / "oma-server"), "--listen", address, "--data-dir", data_dir], env=env)
        try:
            _wait_listening(port, proc)
            health = _step("health check", str(BIN / "grpcurl"), "-plaintext", address, "grpc.health.v1.Health/Check")
            services = _step("service list", str(BIN / "grpcurl"), "-plaintext", address, "list")
            if "SERVING" not in health or "oma.v1" not in services or "vma.v1" not in services:
                raise SystemExit("demo: the server is not serving the oma.v1 and vma.v1 services")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        if code != 0:
            raise SystemExit(f"demo: oma-server exited with {code} on SIGTERM")
    print("\ndemo: OK — server served, answered health and reflection, and stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
