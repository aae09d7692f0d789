"""Process helpers for supervising the NBD server: /proc inspection (Linux only).

An nbdkit left by a crashed OMA is no longer our child, so it is found by its command line and watched with a pidfd
(os.pidfd_open: readable when the process exits). All functions here are blocking but fast (a few /proc reads); the
manager calls the scanning ones through asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    state: str
    cmdline: tuple[str, ...]


def read_proc(pid: int) -> ProcInfo | None:
    """Return what /proc says about `pid`, or None if it does not exist."""
    try:
        stat_text = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces/parens: fields after the last ')' are fixed.
    rest = stat_text[stat_text.rfind(")") + 2 :].split()
    state, ppid = rest[0], int(rest[1])
    cmdline = tuple(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)
    return ProcInfo(pid=pid, ppid=ppid, state=state, cmdline=cmdline)


def is_running(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a dead daemon may linger as a zombie under PID 1)."""
    info = read_proc(pid)
    return info is not None and info.state not in ("Z", "X")


def server_processes(binary_name: str, marker: str) -> list[ProcInfo]:
    """Live processes whose program is `binary_name` and whose arguments contain `marker` (e.g. `dir=<path>`)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        info = read_proc(int(entry.name))
        if (
            info
            and info.state not in ("Z", "X")
            and info.cmdline
            and os.path.basename(info.cmdline[0]) == binary_name
            and any(marker in arg for arg in info.cmdline[1:])
        ):
            found.append(info)
    return found


def fd_targets(pid: int) -> dict[int, str]:
    """Open file descriptors of `pid` and what they point at (empty if it vanished or is not ours to read)."""
    targets: dict[int, str] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return targets
    for fd in fds:
        with contextlib.suppress(OSError):
            targets[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return targets


def open_files(pid: int) -> set[str]:
    """Targets of the open file descriptors of `pid`."""
    return set(fd_targets(pid).values())


def fds_open_on(pid: int, path: str) -> list[int]:
    """File descriptors of `pid` open on `path` (its real path), in ascending order."""
    return sorted(fd for fd, target in fd_targets(pid).items() if target == path)


def kill(pid: int, sig: signal.Signals) -> bool:
    """Send `sig`; False if the process is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def listening_inodes(port: int) -> set[str]:
    """`socket:[inode]` names of the TCP sockets LISTENing on `port` (any address, IPv4 or IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def listens_on(pid: int, port: int) -> bool:
    """True if process `pid` holds a socket listening on `port`."""
    inodes = listening_inodes(port)
    return bool(inodes) and bool(open_files(pid) & inodes)


def listening_pids(port: int) -> list[int]:
    """PIDs of processes that hold a TCP socket LISTENing on `port`."""
    inodes = listening_inodes(port)
    if not inodes:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and open_files(int(entry.name)) & inodes:
            pids.append(int(entry.name))
    return pids


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (a daemon it starts is re-parented to it, not to
    PID 1), so it can reap them. False where the kernel refuses (not Linux, or no libc)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is a (re-parented) child of ours that exited; nothing otherwise."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
