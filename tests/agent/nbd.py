"""A real `nbdkit` for tests (file plugin, dir= mode, as the OMA runs it): sparse file exports on a free port."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from oma_server.ports import free_port


class NbdServer:
    """`add()` exports (before or after `start()`); `stop()` ends nbdkit and reaps it."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.exports_dir = workdir / "exports"
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.exports: dict[str, Path] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def add(self, name: str, size: int) -> str:
        path = self.dir / f"{name}.img"
        with open(path, "wb") as fh:
            fh.truncate(size)
        self.exports[name] = path
        (self.exports_dir / name).symlink_to(path)
        return self.uri(name)

    def uri(self, name: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        argv = ["nbdkit", "--foreground", "--ipaddr", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen([*argv, "file", f"dir={self.exports_dir}"], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nbdkit did not listen on port {self.port}") from None
                time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
