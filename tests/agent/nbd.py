"""A real `nbd-server` for tests: one config file, one or more sparse file exports on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NbdServer:
    """`add()` exports, then `start()`; `stop()` kills the daemon by its pid file."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.exports: dict[str, Path] = {}
        self.pid: int | None = None

    def add(self, name: str, size: int) -> str:
        path = self.dir / f"{name}.img"
        with open(path, "wb") as fh:
            fh.truncate(size)
        self.exports[name] = path
        return self.uri(name)

    def uri(self, name: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        config = self.dir / "nbd-server.conf"
        lines = ["[generic]", "    allowlist = true", "    listenaddr = 127.0.0.1", f"    port = {self.port}"]
        for name, path in self.exports.items():
            lines += [f"[{name}]", f"    exportname = {path}", "    flush = true"]
        config.write_text("\n".join(lines) + "\n")
        pidfile = self.dir / "nbd-server.pid"
        subprocess.run(["nbd-server", "-C", str(config), "-p", str(pidfile)], check=True, capture_output=True)
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nbd-server did not listen on port {self.port}") from None
                time.sleep(0.02)
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.pid = int(pidfile.read_text().strip())

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.pid = None
