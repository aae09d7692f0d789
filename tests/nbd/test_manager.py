"""NbdExportManager against the real nbdkit, checked with the real NBD clients nbdcopy and nbdinfo."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from oma_server.nbd import (
    STATE_ACTIVE,
    STATE_ERROR,
    STATE_PENDING,
    DeviceAlreadyExported,
    DeviceMissing,
    DeviceUnsuitable,
    ExportExists,
    ExportInUse,
    ExportNameInvalid,
    ExportNotFound,
    NbdExportManager,
    NbdPortInUse,
    export_name_for,
    procs,
)
from oma_server.ports import free_port
from tests.nbd.conftest import make_disk, nbd_list, nbdcopy, pattern, requires_nbd, run
from tests.waiting import until

pytestmark = [pytest.mark.nbd, requires_nbd]

MiB = 1 << 20


async def test_data_written_through_export_lands_byte_for_byte(manager: NbdExportManager, tmp_path: Path) -> None:
    # Production device paths are /dev/disk/by-id symlinks; use a symlink to the backing file too.
    disk = make_disk(tmp_path / "vol1.img", 32 * MiB)
    link = tmp_path / "by-id" / "virtio-vol1"
    link.parent.mkdir()
    link.symlink_to(disk)
    src = tmp_path / "src.img"
    src.write_bytes(pattern(32 * MiB, seed=1))

    name = export_name_for("11111111-2222-3333-4444-555555555555")
    info = await manager.add_export(name, str(link))
    assert info.uri == f"nbd://127.0.0.1:{manager.port}/{name}"
    assert info.device_path == str(link) and info.resolved_path == str(disk)
    await manager.wait_ready()
    assert manager.get_export(name).state == STATE_ACTIVE
    assert await nbd_list("127.0.0.1", manager.port) == {name}

    await nbdcopy(str(src), info.uri, "--flush")
    assert disk.read_bytes() == src.read_bytes()
    # and reading back through the export gives the same bytes
    back = tmp_path / "back.img"
    make_disk(back, 32 * MiB)
    await nbdcopy(info.uri, str(back))
    assert back.read_bytes() == src.read_bytes()


async def _slow_stream(
    uri: str, data: bytes, chunk: int, delay: float, hold_last_until: asyncio.Event | None = None
) -> tuple[int, str]:
    """Stream `data` into `uri` with nbdcopy reading a throttled pipe (a long-running transfer).

    With `hold_last_until`, the last chunk is only sent once the event is set, so the transfer is
    guaranteed to be in flight for everything the test does meanwhile.
    """
    proc = await asyncio.create_subprocess_exec(
        "nbdcopy", "--flush", "-", uri, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        for off in range(0, len(data), chunk):
            if hold_last_until is not None and off + chunk >= len(data):
                await hold_last_until.wait()
            proc.stdin.write(data[off : off + chunk])
            await proc.stdin.drain()
            await asyncio.sleep(delay)
    except (BrokenPipeError, ConnectionResetError):
        pass  # nbdcopy died (the test checks its exit status)
    proc.stdin.close()
    err = await proc.stderr.read()
    return await proc.wait(), err.decode()


async def test_add_remove_and_an_oma_restart_leave_a_live_transfer_intact(
    manager_factory: Callable[..., NbdExportManager], tmp_path: Path, nbd_port: int
) -> None:
    size = 48 * MiB
    target = make_disk(tmp_path / "target.img", size)
    other = make_disk(tmp_path / "other.img", 4 * MiB)
    data = pattern(size, seed=4)
    cfg = tmp_path / "nbd-cfg"
    manager = manager_factory(cfg, nbd_port)
    await manager.start()
    info = await manager.add_export("oma-vol-stream", str(target))
    await manager.add_export("oma-vol-other", str(other))
    await manager.wait_ready()

    done_changing = asyncio.Event()
    stream = asyncio.create_task(_slow_stream(info.uri, data, chunk=MiB, delay=0.03, hold_last_until=done_changing))
    await until(lambda: stream.done() or manager.connected_clients("oma-vol-stream"), "the transfer to connect")
    assert not stream.done(), await stream
    changes = 0
    pid = manager.master_pid
    for i in range(4):
        extra = make_disk(tmp_path / f"extra{i}.img", MiB)
        await manager.add_export(f"oma-vol-extra{i}", str(extra))
        assert manager.get_export(f"oma-vol-extra{i}").state == STATE_ACTIVE  # served when add returns
        assert f"oma-vol-extra{i}" in await nbd_list("127.0.0.1", manager.port)
        await manager.remove_export(f"oma-vol-extra{i}")
        changes += 2
    await manager.remove_export("oma-vol-other")  # an idle export, removed for real
    assert await nbd_list("127.0.0.1", manager.port) == {"oma-vol-stream"}
    assert manager.master_pid == pid and manager.restarts == 1  # no change restarted the server

    # An OMA killed outright leaves nbdkit running; the next OMA takes it over without cutting the transfer.
    await _abandon(manager)
    successor = manager_factory(cfg, nbd_port)
    await successor.start()
    assert successor.adopted and successor.master_pid == pid
    assert [e.name for e in successor.list_exports()] == ["oma-vol-stream"]
    assert await successor.connected_clients("oma-vol-stream")
    assert not stream.done(), "the transfer must still be running while exports change and the OMA restarts"
    done_changing.set()

    rc, err = await asyncio.wait_for(stream, 60)
    assert rc == 0, err
    assert changes == 8
    assert target.read_bytes() == data


async def _until_dead(pid: int) -> None:
    """Wait until `pid` has exited (its pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    dead = asyncio.Event()
    loop.add_reader(fd, dead.set)
    try:
        await asyncio.wait_for(dead.wait(), 10)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _abandon(manager: NbdExportManager) -> None:
    """What a SIGKILLed OMA leaves: the manager object gone without stop(); nbdkit keeps running."""
    assert manager._supervisor is not None
    manager._supervisor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await manager._supervisor
    manager.process.forget()
    manager._started = False


async def test_killed_server_comes_back_with_all_exports(manager: NbdExportManager, tmp_path: Path) -> None:
    names = {f"oma-vol-k{i}" for i in range(3)}
    for i, name in enumerate(sorted(names)):
        await manager.add_export(name, str(make_disk(tmp_path / f"k{i}.img", 4 * MiB)))
    await manager.wait_ready()
    old = manager.master_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await _until_dead(old)
    # A dead server is never reported healthy (the supervisor may already have replaced it by now).
    assert manager.master_pid != old or not manager.healthy
    await manager.wait_ready(timeout=10)
    assert manager.master_pid not in (None, old)
    assert procs.is_running(manager.master_pid or 0)
    assert procs.read_proc(old) is None, "the killed nbdkit was reaped, not left a zombie"
    assert await nbd_list("127.0.0.1", manager.port) == names
    assert {e.state for e in manager.list_exports()} == {STATE_ACTIVE}
    src = tmp_path / "src"
    src.write_bytes(pattern(4 * MiB, seed=5))
    await nbdcopy(str(src), manager.uri_for("oma-vol-k1"))
    assert (tmp_path / "k1.img").read_bytes() == src.read_bytes()


async def test_hung_or_wrong_server_is_detected_by_probe(manager: NbdExportManager) -> None:
    # SIGSTOP freezes the master: the pid is alive but the handshake probe times out -> restart.
    old = manager.master_pid
    assert old is not None
    os.kill(old, signal.SIGSTOP)
    try:
        await until(lambda: manager.master_pid != old, "the frozen server to be replaced")
    finally:
        os.kill(old, signal.SIGKILL)
    await manager.wait_ready()
    assert manager.healthy


async def test_reconcile_recreates_missing_and_removes_strays(
    manager_factory: Callable[..., NbdExportManager], tmp_path: Path, nbd_port: int
) -> None:
    disks = {n: str(make_disk(tmp_path / f"{n}.img", MiB)) for n in ("a", "b", "c", "d")}
    cfg = tmp_path / "nbd-cfg"
    m1 = manager_factory(cfg, nbd_port)
    await m1.start()
    await m1.add_export("oma-vol-a", disks["a"])
    await m1.add_export("oma-vol-b", disks["b"])
    await m1.stop()  # like an OMA restart: the config stays on disk
    # Things that happen while the OMA is down: a file goes missing, a stray appears.
    (cfg / "exports" / "oma-vol-a").unlink()
    (cfg / "exports" / "junk.txt").write_text("not ours")
    (cfg / "exports" / ".hidden").symlink_to(disks["d"])

    m2 = manager_factory(cfg, nbd_port)
    report = await m2.start(
        desired={"oma-vol-a": disks["a"], "oma-vol-c": disks["c"], "oma-vol-bad": str(tmp_path / "gone")}
    )
    assert report is not None
    assert report.created == ["oma-vol-a", "oma-vol-c"]
    assert report.removed == ["oma-vol-b"]
    assert "oma-vol-bad" in report.failed and "does not exist" in report.failed["oma-vol-bad"]
    assert sorted(p.name for p in (cfg / "exports").iterdir()) == ["oma-vol-a", "oma-vol-c"]
    await m2.wait_ready()
    assert await nbd_list("127.0.0.1", nbd_port) == {"oma-vol-a", "oma-vol-c"}

    # Reconcile at run time: replace a device, add one, drop one; a second identical call is a no-op.
    report = await m2.reconcile({"oma-vol-a": disks["d"], "oma-vol-b": disks["b"]})
    assert report.replaced == ["oma-vol-a"] and report.created == ["oma-vol-b"] and report.removed == ["oma-vol-c"]
    await m2.wait_ready()
    assert await nbd_list("127.0.0.1", nbd_port) == {"oma-vol-a", "oma-vol-b"}
    src = tmp_path / "src"
    src.write_bytes(pattern(MiB, seed=6))
    await nbdcopy(str(src), m2.uri_for("oma-vol-a"))
    new_dev, old_dev = Path(disks["d"]), Path(disks["a"])
    assert await asyncio.to_thread(new_dev.read_bytes) == src.read_bytes()  # the new device, not the stale one
    assert await asyncio.to_thread(old_dev.read_bytes) == b"\0" * MiB
    again = await m2.reconcile({"oma-vol-a": disks["d"], "oma-vol-b": disks["b"]})
    assert not again.changed and not again.restarted
    assert sorted(again.unchanged) == ["oma-vol-a", "oma-vol-b"]


async def test_leftover_server_of_crashed_oma_is_taken_over(
    manager_factory: Callable[..., NbdExportManager], tmp_path: Path, nbd_port: int
) -> None:
    cfg = tmp_path / "nbd-cfg"
    disk = str(make_disk(tmp_path / "x.img", MiB))
    m1 = manager_factory(cfg, nbd_port)
    await m1.start()
    await m1.add_export("oma-vol-x", disk)
    leftover = m1.master_pid
    await _abandon(m1)
    assert leftover is not None and procs.is_running(leftover)

    m2 = manager_factory(cfg, nbd_port)
    await m2.start()
    await m2.wait_ready()
    assert m2.adopted and m2.master_pid == leftover and m2.restarts == 0
    assert [e.name for e in m2.list_exports()] == ["oma-vol-x"]
    assert await nbd_list("127.0.0.1", nbd_port) == {"oma-vol-x"}
    # Taken over means supervised: its death is noticed and it is restarted (it is not our child any more).
    os.kill(leftover, signal.SIGKILL)
    await _until_dead(leftover)
    await m2.wait_ready(timeout=10)
    assert m2.master_pid not in (None, leftover) and not m2.adopted
    assert await nbd_list("127.0.0.1", nbd_port) == {"oma-vol-x"}


async def test_leftover_server_started_differently_is_replaced(
    manager_factory: Callable[..., NbdExportManager], tmp_path: Path, nbd_port: int
) -> None:
    cfg = tmp_path / "nbd-cfg"
    m1 = manager_factory(cfg, nbd_port)
    await m1.start()
    await m1.add_export("oma-vol-y", str(make_disk(tmp_path / "y.img", MiB)))
    leftover = m1.master_pid
    await _abandon(m1)
    assert leftover is not None
    # The same data dir, another port (the operator changed --nbd-listen): the old server must go.
    other_port = free_port()
    m2 = manager_factory(cfg, other_port)
    await m2.start()
    await m2.wait_ready()
    assert not procs.is_running(leftover) and not m2.adopted
    assert await nbd_list("127.0.0.1", other_port) == {"oma-vol-y"}
    rc, _, _ = await run("nbdinfo", "--list", f"nbd://127.0.0.1:{nbd_port}")
    assert rc != 0, "nothing serves the old port any more"


async def test_another_data_dirs_server_on_the_port_is_reported(
    manager_factory: Callable[..., NbdExportManager], tmp_path: Path, nbd_port: int
) -> None:
    other = manager_factory(tmp_path / "other-data-dir", nbd_port)
    await other.start()
    mine = manager_factory(tmp_path / "my-data-dir", nbd_port)
    with pytest.raises(NbdPortInUse) as exc:
        await mine.start()
    assert exc.value.reason == "NBD_PORT_IN_USE"
    assert f"pid {other.master_pid}" in exc.value.message and "nbdkit" in exc.value.message
    assert other.healthy and procs.is_running(other.master_pid or 0), "the other OMA's server is left alone"


async def test_port_taken_by_another_program_is_reported(
    manager_factory: Callable[..., NbdExportManager], nbd_port: int
) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", nbd_port))
        squatter.listen()
        m = manager_factory(port=nbd_port)
        with pytest.raises(NbdPortInUse) as exc:
            await m.start()
    assert exc.value.reason == "NBD_PORT_IN_USE"
    assert f"pid {os.getpid()}" in exc.value.message and str(nbd_port) in exc.value.message


async def test_bad_requests_are_refused_with_domain_errors(manager: NbdExportManager, tmp_path: Path) -> None:
    disk = str(make_disk(tmp_path / "d.img", MiB))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad in ("../etc", "a/b", "x\n[generic]", "x]", "y" * 129):
        with pytest.raises(ExportNameInvalid) as name_exc:
            await manager.add_export(bad, disk)
        assert name_exc.value.reason == "NBD_EXPORT_NAME_INVALID"
    with pytest.raises(DeviceMissing) as missing:
        await manager.add_export("oma-vol-m", str(tmp_path / "not-attached"))
    assert "not-attached" in missing.value.message and missing.value.reason == "NBD_DEVICE_MISSING"
    for unsuitable in (tmp_path, fifo):
        with pytest.raises(DeviceUnsuitable) as uns:
            await manager.add_export("oma-vol-u", str(unsuitable))
        assert uns.value.reason == "NBD_DEVICE_UNSUITABLE"

    await manager.add_export("oma-vol-dup", disk)
    with pytest.raises(ExportExists) as dup:
        await manager.add_export("oma-vol-dup", disk)
    assert dup.value.reason == "NBD_EXPORT_EXISTS" and "oma-vol-dup" in dup.value.message
    with pytest.raises(DeviceAlreadyExported) as twice:
        await manager.add_export("oma-vol-dup2", disk)
    assert "oma-vol-dup" in twice.value.message
    with pytest.raises(ExportNotFound):
        await manager.remove_export("oma-vol-nope")
    with pytest.raises(ExportNotFound):
        manager.get_export("oma-vol-nope")
    # nothing of the refused requests reached the server or the config
    await manager.wait_ready()
    assert await nbd_list("127.0.0.1", manager.port) == {"oma-vol-dup"}
    assert sorted(p.name for p in manager.exports_dir.iterdir()) == ["oma-vol-dup"]


async def test_remove_with_connected_client_needs_force(manager: NbdExportManager, tmp_path: Path) -> None:
    target = make_disk(tmp_path / "busy.img", 32 * MiB)
    info = await manager.add_export("oma-vol-busy", str(target))
    await manager.wait_ready()
    stream = asyncio.create_task(_slow_stream(info.uri, pattern(32 * MiB, seed=7), chunk=MiB, delay=0.1))
    await until(lambda: stream.done() or manager.connected_clients("oma-vol-busy"), "the transfer to connect")
    assert not stream.done(), await stream
    with pytest.raises(ExportInUse) as exc:
        await manager.remove_export("oma-vol-busy")
    assert "connected client" in exc.value.message and exc.value.reason == "NBD_EXPORT_IN_USE"
    assert manager.get_export("oma-vol-busy").state == STATE_ACTIVE

    await manager.remove_export("oma-vol-busy", force=True)
    rc, _ = await asyncio.wait_for(stream, 30)
    assert rc != 0, "the forcibly removed export's transfer must have been cut"
    assert manager.list_exports() == []
    await manager.wait_ready()
    assert await nbd_list("127.0.0.1", manager.port) == set()


async def test_states_and_vanishing_device(manager: NbdExportManager, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "v.img", MiB)
    link = tmp_path / "virtio-v"
    link.symlink_to(disk)
    info = await manager.add_export("oma-vol-v", str(link))
    assert info.state in (STATE_PENDING, STATE_ACTIVE)
    await manager.wait_ready()
    assert manager.get_export("oma-vol-v").state == STATE_ACTIVE
    link.unlink()  # the volume was detached behind our back
    await until(lambda: manager.get_export("oma-vol-v").state == STATE_ERROR, "the export to be in error")
    err = manager.get_export("oma-vol-v")
    assert err.state == STATE_ERROR and err.error and "does not exist" in err.error
    link.symlink_to(disk)
    await until(lambda: manager.get_export("oma-vol-v").state == STATE_ACTIVE, "the export to be active again")
    assert manager.get_export("oma-vol-v").state == STATE_ACTIVE


async def test_replicas_detached_one_per_probe_round_do_not_restart_the_server(
    manager: NbdExportManager, tmp_path: Path
) -> None:
    """A 50-VM run detaches replicas all the time; a dangling link nbdkit no longer lists is that export's error,
    not nbdkit's: counting it as a failed probe restarted nbdkit under every other copy (the migration-at-scale
    test saw writes fail with "Cannot send after transport endpoint shutdown")."""
    links = []
    for i in range(4):
        link = tmp_path / f"virtio-d{i}"
        link.symlink_to(make_disk(tmp_path / f"d{i}.img", MiB))
        await manager.add_export(f"oma-vol-d{i}", str(link))
        links.append(link)
    kept = make_disk(tmp_path / "kept.img", 4 * MiB)
    await manager.add_export("oma-vol-kept", str(kept))
    await manager.wait_ready()
    pid, launches = manager.master_pid, manager.restarts
    rounds = manager.probe_rounds
    await until(lambda: manager.probe_rounds > rounds, "a supervisor round to end")
    for i, link in enumerate(links):  # a new loss for each of more rounds in a row than the restart threshold
        link.unlink()  # just after a round ended: the next round's probe sees the export gone
        rounds = manager.probe_rounds
        await until(lambda r=rounds: manager.probe_rounds > r, "a supervisor round to end")  # type: ignore[misc]
        assert manager.get_export(f"oma-vol-d{i}").state == STATE_ERROR
    rounds = manager.probe_rounds
    await until(lambda: manager.probe_rounds > rounds + 1, "two more supervisor rounds")
    assert manager.master_pid == pid and manager.restarts == launches
    assert manager.get_export("oma-vol-kept").state == STATE_ACTIVE
    src = tmp_path / "src"
    src.write_bytes(pattern(4 * MiB, seed=9))
    await nbdcopy(str(src), manager.uri_for("oma-vol-kept"))
    assert kept.read_bytes() == src.read_bytes()


async def test_concurrent_adds_are_serialised(manager: NbdExportManager, tmp_path: Path) -> None:
    disks = [str(make_disk(tmp_path / f"c{i}.img", MiB)) for i in range(8)]
    infos = await asyncio.gather(*(manager.add_export(f"oma-vol-c{i}", d) for i, d in enumerate(disks)))
    assert len({i.name for i in infos}) == 8
    await manager.wait_ready()
    assert await nbd_list("127.0.0.1", manager.port) == {f"oma-vol-c{i}" for i in range(8)}
    await asyncio.gather(*(manager.remove_export(f"oma-vol-c{i}") for i in range(0, 8, 2)))
    await manager.wait_ready()
    assert await nbd_list("127.0.0.1", manager.port) == {f"oma-vol-c{i}" for i in range(1, 8, 2)}


async def test_a_hidden_export_list_still_serves_every_export_by_name(
    manager_factory: Callable[..., NbdExportManager], tmp_path: Path
) -> None:
    manager = manager_factory(hide_export_list=True)
    await manager.start()
    await manager.wait_ready()
    disk = make_disk(tmp_path / "h.img", 4 * MiB)
    link = tmp_path / "virtio-h"
    link.symlink_to(disk)
    src = tmp_path / "src.img"
    src.write_bytes(pattern(4 * MiB, seed=7))
    info = await manager.add_export("oma-vol-hidden", str(link))
    await manager.wait_ready()
    assert manager.get_export("oma-vol-hidden").state == STATE_ACTIVE and manager.healthy

    rc, _, err = await run("nbdinfo", "--list", f"nbd://127.0.0.1:{manager.port}")
    assert rc != 0 and "list request" in err, err  # a client learns no name from the server
    await nbdcopy(str(src), info.uri, "--flush")  # the name it was given opens
    assert disk.read_bytes() == src.read_bytes()
    rc, _, err = await run("nbdinfo", "--size", f"nbd://127.0.0.1:{manager.port}/oma-vol-hidde")
    assert rc != 0 and "no export named" in err and "oma-vol-hidden" not in err.replace("'oma-vol-hidde'", "")

    link.unlink()  # detached behind our back: the probe round's device check finds it, with the list hidden too
    await until(lambda: manager.get_export("oma-vol-hidden").state == STATE_ERROR, "the export to be in error")
    await manager.remove_export("oma-vol-hidden")
    rc, _, err = await run("nbdinfo", "--size", info.uri)
    assert rc != 0 and "no export named" in err, err
    assert manager.restarts == 1  # a refused listing is the probe's answer, not a failure that restarts nbdkit
