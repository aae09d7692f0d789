"""The directory nbdkit serves: one symlink per export (`exports/<name>` -> device path), written by us only.

nbdkit's file plugin in `dir=` mode serves every regular file or block device in the directory under its file
name, following symlinks, so adding or removing an export is creating or deleting a link. Links are replaced
atomically (made beside the directory, renamed into it). Blocking: callers run these in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from oma_server.errors import DomainError
from oma_server.nbd.names import check_device_path_syntax, is_export_link, validate_export_name

log = logger.bind(component="nbd")


@dataclass(frozen=True)
class Link:
    name: str
    target: str
    created_at: datetime


class ExportLinks:
    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.directory = config_dir / "exports"
        self.changes = 0  # bumped at every link change: a listing that overlapped one is not trusted

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        check_device_path_syntax(str(self.directory))
        # Files of the nbd-server layout (before 0.3): nothing reads them any more.
        for stale in ("config", "probe.img", "nbd-server.pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.config_dir / stale).unlink()
        shutil.rmtree(self.config_dir / "exports.d", ignore_errors=True)

    def write(self, name: str, target: str) -> None:
        """Create (or atomically replace) the export's symlink."""
        self.changes += 1
        tmp = self.config_dir / f".{name}.link"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        os.replace(tmp, self.directory / name)

    def delete(self, name: str) -> None:
        self.changes += 1
        with contextlib.suppress(FileNotFoundError):
            (self.directory / validate_export_name(name)).unlink()

    def load(self) -> list[Link]:
        """The export links there are; anything else in the directory is removed."""
        found = []
        for path in sorted(self.directory.iterdir()):
            target = _read_link(path) if is_export_link(path) else None
            if target is None:
                log.warning("Removing stray entry {} from the NBD export directory", path)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                continue
            found.append(Link(path.name, target, datetime.fromtimestamp(path.lstat().st_mtime, UTC)))
        return found


def _read_link(path: Path) -> str | None:
    """The link's target if it is one we could have written, else None (a stray)."""
    if not path.is_symlink():
        return None
    try:
        target = os.readlink(path)
        check_device_path_syntax(target)
    except (OSError, DomainError):
        return None
    return target
