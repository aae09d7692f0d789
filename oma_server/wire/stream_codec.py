"""The wire boundary of the appliance protocol: `vma.v1` messages in and out, domain values inside.

Inbound, every decoder checks its message whole before returning anything, and raises MessageRejected
(INVALID_MESSAGE) naming the field and what is wrong. proto3 enums are open — an unknown number arrives as a plain
int — so every enum value is checked against the enum's own descriptor here, once, instead of failing later in the
middle of applying a message. Outbound, commands are encoded once, when the outbox stores them (a resend is the
same bytes), and the stream's other messages when the gateway writes them.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TypeVar

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message

from oma.common.v1 import inventory_pb2, jobs_pb2
from oma.v1 import gateway_pb2
from oma_server.errors import InvalidArgument, MessageRejected
from oma_server.protocol import commands as c
from oma_server.protocol import stream as m
from oma_server.protocol.inventory import DiscoveredDisk, DiscoveredNic, DiscoveredVm
from vma.v1 import stream_pb2

T = TypeVar("T")


class _Checker:
    """Collects the context of one message (job, sequence) so every refusal names it."""

    def __init__(self, what: str, job_id: str = "", sequence: int = 0, command_id: str = "") -> None:
        self.what = what
        self.job_id = job_id
        self.sequence = sequence
        self.command_id = command_id

    def refuse(self, problem: str) -> MessageRejected:
        where = f" (job {self.job_id}, sequence {self.sequence})" if self.job_id else ""
        return MessageRejected(
            "INVALID_MESSAGE",
            f"{self.what}{where}: {problem}; nothing was applied — correct it and send it again",
            self.job_id,
            self.sequence,
            self.command_id,
        )

    def text(self, field: str, value: str, limit: int, *, required: bool = False) -> str:
        if required and not value:
            raise self.refuse(f"{field} is required")
        if len(value) > limit:
            raise self.refuse(f"{field} is {len(value)} characters; at most {limit}")
        return value

    def count(self, field: str, value: int) -> int:
        if value > m.MAX_INT64:
            raise self.refuse(f"{field} {value} is out of range (at most {m.MAX_INT64})")
        return value

    def enum(self, field: str, descriptor: EnumDescriptor, value: int, prefix: str) -> str:
        """The enum value's short lower-case name ("" for the zero value); refused when the number is unknown."""
        if value == 0:
            return ""
        known = descriptor.values_by_number.get(value)
        if known is None:
            names = ", ".join(v.name for v in descriptor.values if v.number)
            raise self.refuse(f"{field} {value} is not a {descriptor.name} value (known: {names})")
        return known.name.removeprefix(prefix).lower()


def _eta_seconds(check: _Checker, report: stream_pb2.ProgressReport) -> float | None:
    if not report.HasField("eta"):
        return None
    seconds, nanos = report.eta.seconds, report.eta.nanos
    if seconds < 0 or nanos < 0 or nanos >= 1_000_000_000:
        raise check.refuse(f"eta {seconds}s {nanos}ns is not a duration of zero or more")
    if seconds > m.MAX_ETA_SECONDS:
        raise check.refuse(f"eta {seconds}s is beyond {m.MAX_ETA_SECONDS}s (ten years); leave it unset if unknown")
    return seconds + nanos / 1e9


def _within(check: _Checker, field: str, done: int, total: int) -> None:
    if total and done > total:
        raise check.refuse(f"{field}: bytes_done {done} exceeds bytes_total {total}")


def _disk_progress(check: _Checker, disk: stream_pb2.DiskProgress) -> m.DiskProgress:
    field = f"disk {disk.disk_id!r}" if disk.disk_id else "a disk entry"
    check.text(f"{field} disk_id", disk.disk_id, m.MAX_ID_CHARS, required=True)
    decoded = m.DiskProgress(
        disk_id=disk.disk_id,
        bytes_done=check.count(f"{field} bytes_done", disk.bytes_done),
        bytes_total=check.count(f"{field} bytes_total", disk.bytes_total),
        throughput_bytes_per_second=check.count(f"{field} throughput", disk.throughput_bytes_per_second),
        phase=check.enum(f"{field} phase", jobs_pb2.CopyPhase.DESCRIPTOR, disk.phase, "COPY_PHASE_"),
        mode=check.enum(f"{field} mode", jobs_pb2.CopyMode.DESCRIPTOR, disk.mode, "COPY_MODE_"),
        resume_token=check.text(f"{field} resume_token", disk.resume_token, m.MAX_RESUME_TOKEN_CHARS),
    )
    _within(check, field, decoded.bytes_done, decoded.bytes_total)
    return decoded


def _job_and_sequence(check: _Checker, job_id: str, sequence: int) -> None:
    check.text("job_id", job_id, m.MAX_ID_CHARS, required=True)
    if sequence <= 0:
        raise check.refuse("sequence must be 1 or more")
    check.count("sequence", sequence)


def decode_progress(report: stream_pb2.ProgressReport) -> m.ProgressReport:
    check = _Checker("progress report", report.job_id, report.sequence)
    _job_and_sequence(check, report.job_id, report.sequence)
    if len(report.disks) > m.MAX_DISKS_PER_REPORT:
        raise check.refuse(f"{len(report.disks)} disk entries; at most {m.MAX_DISKS_PER_REPORT}")
    disks = tuple(_disk_progress(check, d) for d in report.disks)
    seen: set[str] = set()
    for disk in disks:
        if disk.disk_id in seen:
            raise check.refuse(f"disk {disk.disk_id!r} appears twice")
        seen.add(disk.disk_id)
    decoded = m.ProgressReport(
        job_id=report.job_id,
        sequence=report.sequence,
        phase=check.enum("phase", jobs_pb2.CopyPhase.DESCRIPTOR, report.phase, "COPY_PHASE_"),
        current_operation=check.text("current_operation", report.current_operation, m.MAX_OPERATION_CHARS),
        bytes_done=check.count("bytes_done", report.bytes_done),
        bytes_total=check.count("bytes_total", report.bytes_total),
        throughput_bytes_per_second=check.count("throughput", report.throughput_bytes_per_second),
        eta_seconds=_eta_seconds(check, report),
        disks=disks,
    )
    _within(check, "job", decoded.bytes_done, decoded.bytes_total)
    return decoded


def _copied_extents(check: _Checker, done: stream_pb2.DiskCompleted) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, non-empty ranges within int64, at most MAX_COPIED_EXTENTS of them."""
    extents = done.copied.extents
    if len(extents) > m.MAX_COPIED_EXTENTS:
        raise check.refuse(
            f"disk_completed.copied has {len(extents)} extents; at most {m.MAX_COPIED_EXTENTS} (merge neighbours)"
        )
    out: list[tuple[int, int]] = []
    end = 0
    for i, e in enumerate(extents):
        field = f"disk_completed.copied.extents[{i}]"
        if e.length == 0:
            raise check.refuse(f"{field}.length is 0")
        if e.offset + e.length > m.MAX_INT64:
            raise check.refuse(f"{field} ends at {e.offset + e.length}, out of range (at most {m.MAX_INT64})")
        if e.offset < end:
            raise check.refuse(f"{field} starts at {e.offset}, before the end of the previous extent ({end})")
        end = e.offset + e.length
        out.append((e.offset, e.length))
    return tuple(out)


def _hash_runs(check: _Checker, hashes: stream_pb2.BlockHashes) -> tuple[tuple[int, int, bytes], ...]:
    """The runs of a BlockHashes event: the OMA's block construction, ascending, disjoint, each run's hashes whole."""
    if hashes.algorithm != m.HASH_ALGORITHM or hashes.block_size != m.HASH_BLOCK_SIZE:
        raise check.refuse(
            f"block_hashes is {hashes.algorithm or 'no algorithm'} over {hashes.block_size}-byte blocks; the OMA "
            f"verifies {m.HASH_ALGORITHM} over {m.HASH_BLOCK_SIZE}-byte blocks only (send those, or no hashes)"
        )
    total = sum(r.count for r in hashes.runs) + len(hashes.pieces)
    if not (hashes.runs or hashes.pieces) or total > m.MAX_HASHED_BLOCKS_PER_EVENT:
        raise check.refuse(
            f"block_hashes has {total} block(s) and piece(s); send 1 to {m.MAX_HASHED_BLOCKS_PER_EVENT} per event "
            "(more events)"
        )
    out: list[tuple[int, int, bytes]] = []
    end = 0
    for i, r in enumerate(hashes.runs):
        field = f"block_hashes.runs[{i}]"
        if r.count == 0:
            raise check.refuse(f"{field}.count is 0")
        if r.first_block < end:
            raise check.refuse(f"{field} starts at block {r.first_block}, before the end of the previous run ({end})")
        if r.hashes and len(r.hashes) != r.count * m.HASH_SIZE:
            raise check.refuse(
                f"{field}.hashes has {len(r.hashes)} bytes; {r.count} block(s) need {r.count * m.HASH_SIZE} "
                "(or none for all-zero blocks)"
            )
        end = r.first_block + r.count
        if end * m.HASH_BLOCK_SIZE > m.MAX_INT64:
            raise check.refuse(f"{field} ends at block {end}, beyond any disk")
        out.append((r.first_block, r.count, bytes(r.hashes)))
    return tuple(out)


def _piece_hashes(check: _Checker, hashes: stream_pb2.BlockHashes) -> tuple[tuple[int, int, bytes], ...]:
    """The pieces of a BlockHashes event: each inside one block and shorter than it, ascending, disjoint."""
    out: list[tuple[int, int, bytes]] = []
    end = 0
    for i, p in enumerate(hashes.pieces):
        field = f"block_hashes.pieces[{i}]"
        block, last = p.offset // m.HASH_BLOCK_SIZE, (p.offset + p.length - 1) // m.HASH_BLOCK_SIZE
        if p.length == 0 or p.length >= m.HASH_BLOCK_SIZE or block != last:
            raise check.refuse(
                f"{field} ({p.length} bytes at {p.offset}) must lie inside one block and be shorter than it "
                "(send a whole block as a run)"
            )
        if p.offset < end:
            raise check.refuse(f"{field} starts at {p.offset}, before the end of the previous piece ({end})")
        if len(p.hash) != m.HASH_SIZE:
            raise check.refuse(f"{field}.hash has {len(p.hash)} bytes; a {m.HASH_ALGORITHM} hash has {m.HASH_SIZE}")
        end = p.offset + p.length
        if end > m.MAX_INT64:
            raise check.refuse(f"{field} ends at {end}, beyond any disk")
        out.append((p.offset, p.length, bytes(p.hash)))
    return tuple(out)


def decode_event(event: stream_pb2.JobEvent) -> m.JobEvent:
    check = _Checker("job event", event.job_id, event.sequence)
    _job_and_sequence(check, event.job_id, event.sequence)
    kind = event.WhichOneof("event")
    if kind is None:
        raise check.refuse(
            "the event carries nothing (set started, disk_completed, block_hashes, completed, failed or cancelled)"
        )
    if kind == "disk_completed":
        done = event.disk_completed
        check.text("disk_completed.disk_id", done.disk_id, m.MAX_ID_CHARS, required=True)
        if not done.change_id:
            raise check.refuse(f"disk {done.disk_id} completed without a change id")
        return m.JobEvent(
            job_id=event.job_id,
            sequence=event.sequence,
            kind=m.EventKind.DISK_COMPLETED,
            disk_id=done.disk_id,
            change_id=check.text("disk_completed.change_id", done.change_id, m.MAX_CHANGE_ID_CHARS),
            mode=check.enum("disk_completed.mode", jobs_pb2.CopyMode.DESCRIPTOR, done.mode, "COPY_MODE_"),
            copied_extents=_copied_extents(check, done) if done.HasField("copied") else None,
        )
    if kind == "block_hashes":
        hashes = event.block_hashes
        return m.JobEvent(
            job_id=event.job_id,
            sequence=event.sequence,
            kind=m.EventKind.BLOCK_HASHES,
            disk_id=check.text("block_hashes.disk_id", hashes.disk_id, m.MAX_ID_CHARS, required=True),
            hash_runs=_hash_runs(check, hashes),
            piece_hashes=_piece_hashes(check, hashes),
        )
    if kind == "failed":
        failed = event.failed
        return m.JobEvent(
            job_id=event.job_id,
            sequence=event.sequence,
            kind=m.EventKind.FAILED,
            disk_id=check.text("failed.disk_id", failed.disk_id, m.MAX_ID_CHARS),
            error_class=check.enum(
                "failed.error_class", jobs_pb2.ErrorClass.DESCRIPTOR, failed.error_class, "ERROR_CLASS_"
            ),
            detail=check.text("failed.detail", failed.detail, m.MAX_DETAIL_CHARS),
        )
    if kind == "cancelled":
        return m.JobEvent(
            job_id=event.job_id,
            sequence=event.sequence,
            kind=m.EventKind.CANCELLED,
            detail=check.text("cancelled.detail", event.cancelled.detail, m.MAX_DETAIL_CHARS),
        )
    return m.JobEvent(job_id=event.job_id, sequence=event.sequence, kind=m.EventKind(kind))


def decode_command_result(result: stream_pb2.CommandResult) -> c.CommandResult:
    check = _Checker(f"command result {result.command_id}".rstrip(), command_id=result.command_id)
    check.text("command_id", result.command_id, m.MAX_ID_CHARS, required=True)
    outcome = check.enum("outcome", stream_pb2.CommandOutcome.DESCRIPTOR, result.outcome, "COMMAND_OUTCOME_")
    if not outcome:
        raise check.refuse("outcome is required (SUCCEEDED, FAILED or REJECTED)")
    try:
        discovered = tuple(decode_vm(vm) for vm in result.discovery.virtual_machines)
    except InvalidArgument as exc:
        raise check.refuse(exc.message) from None
    return c.CommandResult(
        command_id=result.command_id,
        outcome=outcome,
        detail=check.text("detail", result.detail, m.MAX_DETAIL_CHARS),
        error_class=check.enum("error_class", jobs_pb2.ErrorClass.DESCRIPTOR, result.error_class, "ERROR_CLASS_"),
        discovered=discovered,
        power_state=check.enum(
            "power.power_state", inventory_pb2.PowerState.DESCRIPTOR, result.power.power_state, "POWER_STATE_"
        ),
        encoded=result.SerializeToString(),
    )


def decode_stored_result(encoded: bytes) -> c.CommandResult:
    """A result the outbox stored (it was checked when it arrived)."""
    return decode_command_result(stream_pb2.CommandResult.FromString(encoded))


def decode_vm(vm: inventory_pb2.VirtualMachine) -> DiscoveredVm:
    """A discovered VM, from an appliance's answer or an operator's RegisterVmContext (INVALID_ARGUMENT naming the
    field when an enum value is unknown)."""

    def name_of(field: str, descriptor: EnumDescriptor, value: int, prefix: str) -> str:
        if value and value not in descriptor.values_by_number:
            raise InvalidArgument(
                f"virtual_machine.{field} {value} is not a {descriptor.name} value",
                reason="VM_INVENTORY_INVALID",
                field=f"virtual_machine.{field}",
            )
        return descriptor.values_by_number[value].name.removeprefix(prefix).lower() if value else ""

    return DiscoveredVm(
        vcenter=vm.vcenter,
        datacenter=vm.datacenter,
        uuid=vm.uuid,
        moref=vm.moref,
        name=vm.name,
        num_cpus=vm.num_cpus,
        memory_mib=vm.memory_mib,
        guest_os=vm.guest_os,
        firmware=name_of("firmware", inventory_pb2.Firmware.DESCRIPTOR, vm.firmware, "FIRMWARE_"),
        power_state=name_of("power_state", inventory_pb2.PowerState.DESCRIPTOR, vm.power_state, "POWER_STATE_"),
        nics=tuple(_same_fields(DiscoveredNic, n) for n in vm.nics),
        disks=tuple(_same_fields(DiscoveredDisk, d) for d in vm.disks),
    )


def _same_fields(cls: type[T], message: Message) -> T:
    """A domain value whose fields are named and typed as the message's (NIC and disk inventory)."""
    return cls(**{f.name: getattr(message, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def encode_vm(vm: DiscoveredVm) -> inventory_pb2.VirtualMachine:
    return inventory_pb2.VirtualMachine(
        vcenter=vm.vcenter,
        datacenter=vm.datacenter,
        uuid=vm.uuid,
        moref=vm.moref,
        name=vm.name,
        num_cpus=vm.num_cpus,
        memory_mib=vm.memory_mib,
        guest_os=vm.guest_os,
        firmware=_enum_value(inventory_pb2.Firmware.DESCRIPTOR, "FIRMWARE_", vm.firmware),  # type: ignore[arg-type]
        power_state=_enum_value(inventory_pb2.PowerState.DESCRIPTOR, "POWER_STATE_", vm.power_state),  # type: ignore[arg-type]
        nics=[inventory_pb2.Nic(**dataclasses.asdict(n)) for n in vm.nics],
        disks=[inventory_pb2.VirtualDisk(**dataclasses.asdict(d)) for d in vm.disks],
    )


def _enum_value(descriptor: EnumDescriptor, prefix: str, name: str) -> int:
    return descriptor.values_by_name[prefix + name.upper()].number if name else 0


# ---- outbound ------------------------------------------------------------------------------------------------------
def _extents(extents: tuple[tuple[int, int], ...]) -> stream_pb2.CopiedExtents | None:
    if not extents:
        return None
    return stream_pb2.CopiedExtents(extents=[stream_pb2.ByteExtent(offset=o, length=n) for o, n in extents])


def encode_command(command: c.Command, command_id: str, issued_at: datetime) -> bytes:
    """A command as it is stored in the outbox and sent (and re-sent) to the appliance."""
    wire = stream_pb2.Command(command_id=command_id)
    wire.issued_at.FromDatetime(issued_at)
    match command:
        case c.StartReplication():
            wire.start_replication.CopyFrom(
                stream_pb2.StartReplicationCommand(
                    job_id=command.job_id,
                    vm_uuid=command.vm_uuid,
                    last_applied_sequence=command.last_applied_sequence,
                    disks=[
                        stream_pb2.DiskTarget(
                            disk_id=d.disk_id,
                            disk_key=d.disk_key,
                            nbd_uri=d.nbd_uri,
                            previous_change_id=d.previous_change_id,
                            capacity_bytes=d.capacity_bytes,
                            resume_token=d.resume_token,
                            target_is_new=d.target_is_new,
                            repair_extents=_extents(d.repair_extents),
                        )
                        for d in command.disks
                    ],
                )
            )
        case c.CancelJob():
            wire.cancel_job.job_id = command.job_id
        case c.PowerOff():
            wire.power_off.vm_uuid = command.vm_uuid
            wire.power_off.graceful_timeout.seconds = command.graceful_timeout_s
        case c.PowerOn():
            wire.power_on.vm_uuid = command.vm_uuid
        case c.Discover():
            wire.discover.name_filter = command.name_filter
        case c.ReleaseSource():
            wire.release_source.vm_uuid = command.vm_uuid
        case c.SetBandwidthLimit():
            wire.set_bandwidth_limit.SetInParent()  # all-unlimited is a command too
            wire.set_bandwidth_limit.appliance_bytes_per_second = command.appliance_bytes_per_second
            wire.set_bandwidth_limit.job_bytes_per_second.update(dict(command.job_bytes_per_second))
    return wire.SerializeToString()


def decode_stored_limits(encoded: bytes) -> c.SetBandwidthLimit:
    """The limits of a SetBandwidthLimit command as the outbox stored it."""
    limits = stream_pb2.Command.FromString(encoded).set_bandwidth_limit
    return c.SetBandwidthLimit(limits.appliance_bytes_per_second, tuple(sorted(limits.job_bytes_per_second.items())))


def encode_outgoing(message: m.Outgoing) -> gateway_pb2.ConnectResponse:
    """One message of the OMA's side of the stream."""
    response = gateway_pb2.ConnectResponse()
    match message:
        case m.Welcome():
            response.welcome.session_id = message.session_id
            interval = message.heartbeat_interval_s
            response.welcome.heartbeat_interval.seconds = int(interval)
            response.welcome.heartbeat_interval.nanos = round((interval % 1) * 1e9)
            response.welcome.server_version = message.server_version
            response.welcome.open_jobs.extend(
                stream_pb2.JobCursor(job_id=job_id, last_applied_sequence=seq) for job_id, seq in message.cursors
            )
        case m.JobAck():
            response.ack.job_id = message.job_id
            response.ack.sequence = message.sequence
        case c.QueuedCommand():
            response.command.MergeFromString(message.encoded)
        case m.CommandResultAck():
            response.command_result_ack.command_id = message.command_id
        case m.StreamError():
            response.error.code = stream_pb2.StreamErrorCode.Value(f"STREAM_ERROR_CODE_{message.code}")  # type: ignore[assignment]
            response.error.job_id = message.job_id
            response.error.sequence = message.sequence
            response.error.command_id = message.command_id
            response.error.message = message.message
    return response


def decode_heartbeat(heartbeat: stream_pb2.Heartbeat) -> m.Heartbeat:
    check = _Checker("heartbeat")
    if len(heartbeat.running_job_ids) > m.MAX_RUNNING_JOBS:
        raise check.refuse(f"{len(heartbeat.running_job_ids)} running job ids; at most {m.MAX_RUNNING_JOBS}")
    for job_id in heartbeat.running_job_ids:
        check.text("running_job_ids", job_id, m.MAX_ID_CHARS)
    return m.Heartbeat(running_job_ids=tuple(heartbeat.running_job_ids))


def decode_hello(hello: stream_pb2.Hello) -> m.Hello:
    """A Hello that cannot be decoded ends the stream (INVALID_ARGUMENT); nothing is recorded of it."""
    limits = (
        ("appliance_id", hello.appliance_id, m.MAX_ID_CHARS),
        ("credential", hello.credential, m.MAX_DETAIL_CHARS),
        ("agent_version", hello.agent_version, 64),
        ("last_command_id", hello.last_command_id, m.MAX_ID_CHARS),
    )
    for field, value, limit in limits:
        if len(value) > limit:
            raise InvalidArgument(
                f"Hello.{field} is {len(value)} characters; at most {limit}", reason="HELLO_INVALID", field=field
            )
        if "\x00" in value:  # no id or text the OMA stores has one (PostgreSQL refuses it in a query)
            raise InvalidArgument(f"Hello.{field} contains a NUL character", reason="HELLO_INVALID", field=field)
    if len(hello.capabilities) > 64 or any(len(c) > 64 or "\x00" in c for c in hello.capabilities):
        raise InvalidArgument(
            "Hello.capabilities: at most 64 entries of at most 64 characters, without NUL", reason="HELLO_INVALID"
        )
    return m.Hello(
        appliance_id=hello.appliance_id,
        credential=hello.credential,
        agent_version=hello.agent_version,
        capabilities=tuple(hello.capabilities),
        last_command_id=hello.last_command_id,
    )
