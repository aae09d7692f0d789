"""Export names and device paths: the one place that derives and validates them.

Export names become file names in the directory nbdkit serves (`exports/<name>`, a symlink to the device) and
the names NBD clients ask for; device paths become the symlinks' targets. Names are restricted to a safe file-name
alphabet (no path separator, no leading dot or dash, no control character); device paths to absolute paths without
control characters, backslashes, brackets, `=` or `%` (the alphabet of `/dev/disk/by-id` links), so that no name
escapes the export directory and no path carries anything a log line, a URI or a config file could misread.
Everything is refused here, before anything is written.
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from oma_server.nbd.errors import DeviceMissing, DevicePathInvalid, DeviceUnsuitable, ExportNameInvalid

#: Every export the OMA creates is named `oma-vol-<volume id>`.
EXPORT_NAME_PREFIX = "oma-vol-"
#: Longest accepted export name (the NBD protocol allows 4096 bytes; file names allow 255).
MAX_EXPORT_NAME_LEN = 128
#: Longest accepted device path.
MAX_DEVICE_PATH_LEN = 1024
#: Export name reserved for the probe export of the nbd-server layout (kept reserved: old data dirs may name it).
PROBE_EXPORT_NAME = "oma-probe"

_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_VOLUME_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9-]*\Z")
# Characters a device path may not carry: escapes (\), brackets, `=` and `%` (delimiters and placeholders of
# server config formats: a path is also shown in logs and could be handed to other tools), every control character.
_FORBIDDEN_PATH_CHARS = set("\\[]=%") | {chr(c) for c in range(0x20)} | {"\x7f"}


def export_name_for(volume_id: str) -> str:
    """Derive THE export name of a volume: `oma-vol-<volume id>`.

    `volume_id` is the CloudStack volume id (a UUID). UUIDs are normalised to lower case so that the same
    volume always maps to the same name; other ids must be alphanumeric with dashes.
    """
    if not isinstance(volume_id, str) or not volume_id:
        raise ExportNameInvalid(
            "Cannot derive an NBD export name from an empty volume id; pass the CloudStack volume id.",
            volume_id=volume_id,
        )
    try:
        ident = str(uuid.UUID(volume_id))
    except ValueError:
        if not _VOLUME_ID_RE.match(volume_id):
            raise ExportNameInvalid(
                f"Cannot derive an NBD export name from volume id {volume_id!r}: only letters, digits and "
                "dashes are allowed. Pass the CloudStack volume id.",
                volume_id=volume_id,
            ) from None
        ident = volume_id.lower()
    return validate_export_name(EXPORT_NAME_PREFIX + ident)


def validate_export_name(name: str) -> str:
    """Return `name` if it is a safe export name, else raise ExportNameInvalid.

    Allowed: 1..128 characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit; not the reserved
    probe export name.
    """
    if not isinstance(name, str) or not name:
        raise ExportNameInvalid("NBD export name is empty; derive it with export_name_for(volume_id).")
    shown = name if len(name) <= 80 else name[:80] + "..."
    if len(name) > MAX_EXPORT_NAME_LEN:
        raise ExportNameInvalid(
            f"NBD export name {shown!r} is {len(name)} characters long; at most {MAX_EXPORT_NAME_LEN} are "
            "allowed. Derive it with export_name_for(volume_id).",
            export=shown,
        )
    if not _NAME_RE.match(name):
        raise ExportNameInvalid(
            f"NBD export name {shown!r} is not allowed: use only letters, digits, '.', '_' and '-', starting "
            "with a letter or digit (no path separators, brackets, spaces or control characters). Derive "
            "it with export_name_for(volume_id).",
            export=shown,
        )
    if name == PROBE_EXPORT_NAME:
        raise ExportNameInvalid(
            f"NBD export name {name!r} is reserved for the manager's health probe; choose another name.",
            export=name,
        )
    return name


@dataclass(frozen=True)
class DevicePath:
    """A validated device path: `path` as given (the symlink's target) and `resolved` (its real target)."""

    path: str
    resolved: str
    is_block: bool


def check_device_path_syntax(path: str) -> str:
    """Return `path` if its text is acceptable as a symlink target (absolute, no forbidden characters)."""
    if not isinstance(path, str) or not path:
        raise DevicePathInvalid("NBD device path is empty; pass the absolute path of the attached volume.")
    shown = repr(path if len(path) <= 200 else path[:200] + "...")
    if len(path) > MAX_DEVICE_PATH_LEN:
        raise DevicePathInvalid(
            f"NBD device path {shown} is longer than {MAX_DEVICE_PATH_LEN} characters.", device_path=path[:200]
        )
    bad = sorted({c for c in path if c in _FORBIDDEN_PATH_CHARS})
    if bad:
        raise DevicePathInvalid(
            f"NBD device path {shown} contains characters an export link cannot carry safely "
            f"({', '.join(repr(c) for c in bad)}); use the volume's /dev/disk/by-id path.",
            device_path=path[:200],
        )
    if path != path.strip():
        raise DevicePathInvalid(
            f"NBD device path {shown} has leading or trailing whitespace; pass the exact path.",
            device_path=path,
        )
    if not os.path.isabs(path):
        raise DevicePathInvalid(
            f"NBD device path {shown} is not absolute; pass an absolute path such as /dev/disk/by-id/virtio-<serial>.",
            device_path=path,
        )
    return path


def validate_device_path(path: str | os.PathLike[str]) -> DevicePath:
    """Validate a device path for export; blocking (stat), call it via asyncio.to_thread from async code.

    The path must be absolute, carry no config-injection characters, exist (symlinks are followed — in
    production these are `/dev/disk/by-id/virtio-...` links) and resolve to a block device or a regular file.
    The path as given is what the export link points to: a by-id link keeps pointing at the right volume even if
    the kernel name (`/dev/vdb`) changes after a re-attach.
    """
    text = check_device_path_syntax(os.fspath(path))
    try:
        resolved = os.path.realpath(text, strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise DeviceMissing(
            f"NBD device {text!r} does not exist (or is a dangling symlink). Attach the volume to the OMA and "
            "wait for its device to appear, then retry.",
            device_path=text,
        ) from None
    except OSError as exc:
        raise DeviceMissing(
            f"NBD device {text!r} cannot be resolved: {exc.strerror}. Check the volume attachment.",
            device_path=text,
        ) from None
    check_device_path_syntax(resolved)
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        raise DeviceMissing(
            f"NBD device {text!r} disappeared while it was being checked; re-attach the volume and retry.",
            device_path=text,
        ) from None
    if stat.S_ISBLK(st.st_mode):
        return DevicePath(path=text, resolved=resolved, is_block=True)
    if stat.S_ISREG(st.st_mode):
        return DevicePath(path=text, resolved=resolved, is_block=False)
    kind = _kind(st.st_mode)
    raise DeviceUnsuitable(
        f"NBD device {text!r} resolves to {resolved!r}, which is a {kind}; only block devices and regular "
        "files can be exported. Pass the attached volume's device path.",
        device_path=text,
        resolved=resolved,
        kind=kind,
    )


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
    ):
        if test(mode):
            return kind
    return "special file"


def is_export_link(path: Path) -> bool:
    """True if `path` is named like an export (the manager only ever writes such symlinks)."""
    return path.is_symlink() and bool(_NAME_RE.match(path.name)) and path.name != PROBE_EXPORT_NAME
