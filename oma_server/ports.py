"""A free TCP port on 127.0.0.1 for a server we start next (the demo, tests, benchmarks).

Binding port 0 returns a port from the kernel's ephemeral range, the same range outgoing connections take their
local ports from: between handing the number out and the server binding it, any client socket of this or another
process may take it (seen: nbdkit refused a port the pytest process held for a gRPC connection). So the port is
drawn at random from below the ephemeral range, where the kernel never assigns one on its own, checked by binding,
and never handed out twice by one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_LOWEST = 10_000
_DEFAULT_EPHEMERAL_LOW = 32_768
# Well-known defaults of a real set-up (oma-server, NBD, the simulator, PostgreSQL): never handed out.
_RESERVED = frozenset({50051, 10809, 8080, 5432})

_handed_out: set[int] = set()
_lock = threading.Lock()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    high = max(_ephemeral_low(), _LOWEST + 1000)
    with _lock:
        for _ in range(1000):
            port = random.randrange(_LOWEST, high)
            if port in _handed_out or port in _RESERVED or not _bindable(port):
                continue
            _handed_out.add(port)
            return port
    raise OSError(f"no free TCP port on 127.0.0.1 between {_LOWEST} and {high}")
