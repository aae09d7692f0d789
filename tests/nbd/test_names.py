"""Export names and device paths: derivation and refusal of anything that could inject into the config."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oma_server.errors import FailedPrecondition, InvalidArgument
from oma_server.nbd import (
    DeviceMissing,
    DevicePathInvalid,
    DeviceUnsuitable,
    ExportNameInvalid,
    export_name_for,
    validate_device_path,
    validate_export_name,
)
from oma_server.nbd.names import MAX_EXPORT_NAME_LEN


def test_export_name_derives_from_volume_id_and_is_stable() -> None:
    vid = "5D9C3A9E-2F6B-4C1E-9A57-0B8F2E4D6C11"
    assert export_name_for(vid) == "oma-vol-5d9c3a9e-2f6b-4c1e-9a57-0b8f2e4d6c11"
    assert export_name_for(vid.lower()) == export_name_for(vid)
    assert export_name_for("vol-42") == "oma-vol-vol-42"


@pytest.mark.parametrize("bad", ["", "abc\n", "../etc/passwd", "a/b", "x\n[generic]", "id with space", "a]b", "é"])
def test_export_name_for_refuses_unsafe_ids(bad: str) -> None:
    with pytest.raises(ExportNameInvalid) as exc:
        export_name_for(bad)
    assert exc.value.reason == "NBD_EXPORT_NAME_INVALID"
    assert "volume id" in exc.value.message


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../escape",
        "a/b",
        "/abs",
        "name\nexportname = /etc/shadow",
        "name]",
        "[generic",
        "has space",
        "nul\0byte",
        "semi;colon",
        ".hidden",
        "-dash-first",
        "x" * (MAX_EXPORT_NAME_LEN + 1),
        "trailing-newline\n",
        "oma-probe",
    ],
)
def test_bad_export_names_are_refused_with_a_clear_message(bad: str) -> None:
    with pytest.raises(ExportNameInvalid) as exc:
        validate_export_name(bad)
    assert isinstance(exc.value, InvalidArgument)
    assert exc.value.reason == "NBD_EXPORT_NAME_INVALID"
    assert "export name" in exc.value.message


def test_longest_name_is_accepted() -> None:
    name = "a" * MAX_EXPORT_NAME_LEN
    assert validate_export_name(name) == name


@given(st.text(max_size=200))
def test_any_accepted_name_is_safe_as_section_and_file_name(text: str) -> None:
    try:
        name = validate_export_name(text)
    except ExportNameInvalid:
        return
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert not name.startswith((".", "-")) and len(name) <= MAX_EXPORT_NAME_LEN


@given(st.uuids())
def test_every_uuid_gives_a_valid_name(u: uuid.UUID) -> None:
    assert validate_export_name(export_name_for(str(u))) == f"oma-vol-{u}"


@pytest.mark.parametrize(
    "bad",
    [
        "relative/disk.img",
        "/dev/disk\nexportname=/etc/shadow",
        "/a=b",
        "/a[b",
        "/a]b",
        "/a\0b",
        "/a%sb",
        "/a\\b",
        "/a\tb",
        " /lead",
        "/trail ",
    ],
)
def test_bad_device_paths_are_refused(bad: str) -> None:
    with pytest.raises(DevicePathInvalid) as exc:
        validate_device_path(bad)
    assert exc.value.reason == "NBD_DEVICE_PATH_INVALID"
    assert "device path" in exc.value.message


def test_missing_device_and_dangling_symlink(tmp_path: Path) -> None:
    with pytest.raises(DeviceMissing) as exc:
        validate_device_path(str(tmp_path / "nope"))
    assert isinstance(exc.value, FailedPrecondition)
    assert exc.value.reason == "NBD_DEVICE_MISSING"
    assert "Attach the volume" in exc.value.message
    link = tmp_path / "virtio-dangling"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(DeviceMissing):
        validate_device_path(str(link))


def test_directory_fifo_and_char_device_are_unsuitable(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, "directory"), (fifo, "fifo"), (Path("/dev/null"), "character device")):
        with pytest.raises(DeviceUnsuitable) as exc:
            validate_device_path(str(path))
        assert exc.value.reason == "NBD_DEVICE_UNSUITABLE"
        assert kind in exc.value.message


def test_symlink_is_resolved_but_kept_as_given(tmp_path: Path) -> None:
    disk = tmp_path / "state" / "vol.img"
    disk.parent.mkdir()
    disk.write_bytes(b"\0" * 4096)
    link = tmp_path / "by-id" / "virtio-abc"
    link.parent.mkdir()
    link.symlink_to(disk)
    dev = validate_device_path(str(link))
    assert dev.path == str(link)
    assert dev.resolved == str(disk)
    assert not dev.is_block
