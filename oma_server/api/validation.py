"""Every field of every request checked before a handler sees it: one place, driven by the message descriptors.

Rules by kind apply to every field of every request message, nested messages and list items included:
- an enum holds a value its type defines (proto3 keeps unknown numbers, which no name maps back to);
- a string has at most `MAX_CHARS` characters (or its rule's limit) and no NUL, which PostgreSQL cannot store;
- a list has at most `MAX_ITEMS` items (or its rule's limit);
- an unsigned integer fits the signed column it is stored in (64-bit: 2**63-1, 32-bit: 2**31-1);
- `page_size` is not negative and `page_token` is one this server issued; `request_id` is a printable token.
`RULES` then adds what the kind cannot know, per request type and field path: required fields, ids (1-64 of
`[A-Za-z0-9._:-]`, what every id the OMA or CloudStack issues looks like; an unknown well-formed id stays NOT_FOUND),
the database's column sizes, and the ranges a VMware inventory can have.

A failed check is an `InvalidArgument` naming the field path (`virtual_machine.disks[2].capacity_bytes`) in its
message and in ErrorInfo metadata (`field`), before anything of the request is used.

Hand-written rather than protovalidate (Buf's validator, the field's library): that needs `buf.validate`
annotations in every proto and their proto module from the Buf Schema Registry, which this build does not reach
(it has PyPI, Debian and npm), and a generated contract change for every rule. This is one walk of the descriptors
plus a table; the plan for each request type is compiled once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from oma_server.errors import InvalidArgument
from oma_server.pagination import decode_token, page_size_of

MAX_CHARS = 1024
MAX_ITEMS = 1000
MAX_BYTES = 1024 * 1024
MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1
# VMware limits (vSphere 8 configuration maximums): a VM's vCPUs, memory, virtual disks and NICs; a VMDK's size.
MAX_VCPUS = 768
MAX_MEMORY_MIB = 24 * 1024 * 1024
MAX_DISKS = 256
MAX_NICS = 10
MAX_DISK_BYTES = 62 * 2**40

_ID_RE = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")
_REQUEST_ID_RE = re.compile(r"\A[\x21-\x7e]{1,128}\Z")


@dataclass(frozen=True)
class Rule:
    """What one field must hold beyond its kind's rules."""

    required: bool = False
    max_chars: int | None = None
    pattern: re.Pattern[str] | None = None
    hint: str = ""  # what a good value looks like, for the message
    low: int | None = None
    high: int | None = None
    max_items: int | None = None
    reason: str = ""  # ErrorInfo reason for a value that breaks the rule (default: by the kind of problem)
    missing_reason: str = ""  # ... and for a required field left empty (default FIELD_REQUIRED)


def Id(required: bool = False, what: str = "an id") -> Rule:
    return Rule(
        required=required,
        pattern=_ID_RE,
        reason="ID_INVALID",
        hint=f"{what} is 1-64 letters, digits, '.', '_', ':' or '-' (as returned by the server)",
    )


def Text(max_chars: int, required: bool = False) -> Rule:
    return Rule(required=required, max_chars=max_chars)


REQUIRED = Rule(required=True)
ID = Id()
REQUIRED_ID = Id(required=True)
CLOUDSTACK_ID = Id(what="a CloudStack id")

_VIRTUAL_MACHINE: dict[str, Rule] = {
    "vcenter": Text(255),  # the service says which inventory fields must be there (VM_INVENTORY_INVALID)
    "datacenter": Text(255),
    "uuid": Text(64),
    "moref": Text(64),
    "name": Text(255),
    "num_cpus": Rule(high=MAX_VCPUS),
    "memory_mib": Rule(high=MAX_MEMORY_MIB),
    "guest_os": Text(128),
    "nics": Rule(max_items=MAX_NICS),
    "nics.label": Text(255),
    "nics.network_name": Text(255),
    "nics.mac_address": Text(64),
    "nics.adapter_type": Text(64),
    "disks": Rule(max_items=MAX_DISKS),
    "disks.key": Rule(low=0),
    "disks.label": Text(255),
    "disks.capacity_bytes": Rule(high=MAX_DISK_BYTES),
    "disks.datastore_path": Text(1024),
    "disks.current_change_id": Text(255),
    "disks.unit_number": Rule(low=0, high=MAX_INT32),
}

_NETWORK_MAPPING: dict[str, Rule] = {
    "mapping": REQUIRED,
    "mapping.id": ID,
    "mapping.vm_context_id": ID,
    "mapping.source_network": Text(255),
    "mapping.target_network_id": CLOUDSTACK_ID,
    "mapping.static_ip": Text(64),
}

_SCHEDULE_SPEC: dict[str, Rule] = {
    "spec": REQUIRED,
    "spec.name": Text(255),
    "spec.target.id": ID,
    "spec.cron": Text(255),
    "spec.time_zone": Text(64),
    "spec.interval_seconds": Rule(high=366 * 86400),
    "spec.jitter_seconds": Rule(high=366 * 86400),
    "spec.rpo_target_seconds": Rule(high=10 * 366 * 86400),
}  # the service checks the timing as a whole (a cron that parses, a zone that exists, gaps, jitter)

_GROUP_SPEC: dict[str, Rule] = {
    "spec": REQUIRED,
    "spec.name": Text(255, required=True),
    "spec.description": Text(1024),
    "spec.members": Rule(max_items=500),
    "spec.members.vm_context_id": REQUIRED_ID,
}  # the service checks what the members refer to (VMs that exist, in no other group, no schedule conflict)

# Per request type: field path (list items without an index) → rule.
RULES: dict[str, dict[str, Rule]] = {
    "oma.v1.EnrollApplianceRequest": {"name": Text(63)},  # the service checks the name's form
    "oma.v1.GetApplianceRequest": {"id": REQUIRED_ID},
    "oma.v1.RevokeApplianceRequest": {"id": REQUIRED_ID},
    # The services check the token's form and the CSR whole (security/appliance_identity.py, security/ca.py).
    "oma.v1.JoinApplianceRequest": {"join_token": Text(128, required=True), "csr_pem": Text(16384, required=True)},
    "oma.v1.RenewApplianceCertificateRequest": {"csr_pem": Text(16384, required=True)},
    "oma.v1.ConfirmApplianceCertificateRequest": {},
    "oma.v1.ListAppliancesRequest": {},
    "oma.v1.RegisterVmContextRequest": {
        "appliance_id": REQUIRED_ID,
        "virtual_machine": Rule(required=True, missing_reason="VM_INVENTORY_MISSING"),
        **{f"virtual_machine.{path}": rule for path, rule in _VIRTUAL_MACHINE.items()},
    },
    "oma.v1.DiscoverVmsRequest": {
        "appliance_id": REQUIRED_ID,
        "name_filter": Text(255),
        "timeout_seconds": Rule(high=300, reason="TIMEOUT_INVALID"),
    },
    "oma.v1.GetVmContextRequest": {"id": REQUIRED_ID},
    "oma.v1.ListVmContextsRequest": {"appliance_id": ID},
    "oma.v1.StartReplicationRequest": {"vm_context_id": REQUIRED_ID},
    "oma.v1.GetReplicationJobRequest": {"id": REQUIRED_ID},
    "oma.v1.ListReplicationJobsRequest": {"vm_context_id": ID, "appliance_id": ID, "statuses": Rule(max_items=32)},
    "oma.v1.CancelReplicationJobRequest": {"id": REQUIRED_ID},
    "oma.v1.RetryReplicationJobRequest": {"id": REQUIRED_ID},
    "oma.v1.WatchJobRequest": {"job_id": REQUIRED_ID},
    "oma.v1.WatchJobsRequest": {"vm_context_id": ID},
    "oma.v1.ListJobLogEntriesRequest": {"job_id": REQUIRED_ID},
    "oma.v1.GetVolumeRequest": {"id": REQUIRED_ID},
    "oma.v1.ListVolumesRequest": {"vm_context_id": ID},
    "oma.v1.GetNbdExportRequest": {"name": Text(128, required=True)},
    "oma.v1.ListNbdExportsRequest": {},
    "oma.v1.CheckFailoverReadinessRequest": {"vm_context_id": REQUIRED_ID},
    "oma.v1.StartFailoverRequest": {"vm_context_id": REQUIRED_ID, "service_offering_id": CLOUDSTACK_ID},
    "oma.v1.CleanupFailoverRequest": {"vm_context_id": REQUIRED_ID},
    "oma.v1.RollbackFailoverRequest": {"vm_context_id": REQUIRED_ID},
    "oma.v1.GetFailoverJobRequest": {"id": REQUIRED_ID},
    "oma.v1.ListFailoverJobsRequest": {"vm_context_id": ID},
    "oma.v1.CreateNetworkMappingRequest": _NETWORK_MAPPING,
    "oma.v1.ListNetworkMappingsRequest": {"vm_context_id": ID},
    "oma.v1.UpdateNetworkMappingRequest": {**_NETWORK_MAPPING, "mapping.id": REQUIRED_ID},
    "oma.v1.DeleteNetworkMappingRequest": {"id": REQUIRED_ID},
    "oma.v1.GetJobRequest": {"id": REQUIRED_ID},
    "oma.v1.ListJobsRequest": {"vm_context_id": ID},
    "oma.v1.CancelJobRequest": {"id": REQUIRED_ID},
    "oma.v1.PowerOnSourceVmRequest": {"vm_context_id": REQUIRED_ID},
    "oma.v1.PowerOffSourceVmRequest": {"vm_context_id": REQUIRED_ID},
    "oma.v1.VerifyVmContextRequest": {"vm_context_id": REQUIRED_ID},
    "oma.v1.DeleteVmContextRequest": {"id": REQUIRED_ID},
    "oma.v1.CompleteMigrationRequest": {"vm_context_id": REQUIRED_ID},
    "oma.v1.CreateApiTokenRequest": {"name": Text(63)},  # the service checks the name's form
    "oma.v1.ListApiTokensRequest": {},
    "oma.v1.RevokeApiTokenRequest": {"id": REQUIRED_ID},
    "oma.v1.ListAuditEntriesRequest": {"token_id": ID, "method": Text(128), "resource": Text(255)},
    "oma.v1.ListZonesRequest": {},
    "oma.v1.ListNetworksRequest": {"zone_id": CLOUDSTACK_ID},
    "oma.v1.ListServiceOfferingsRequest": {},
    "oma.v1.ListDiskOfferingsRequest": {},
    "oma.v1.ListTemplatesRequest": {"zone_id": CLOUDSTACK_ID},
    "oma.v1.CreateScheduleRequest": _SCHEDULE_SPEC,
    "oma.v1.GetScheduleRequest": {"id": REQUIRED_ID},
    "oma.v1.ListSchedulesRequest": {"target_id": ID},
    "oma.v1.UpdateScheduleRequest": {**_SCHEDULE_SPEC, "id": REQUIRED_ID},
    "oma.v1.DeleteScheduleRequest": {"id": REQUIRED_ID},
    "oma.v1.PauseScheduleRequest": {"id": REQUIRED_ID},
    "oma.v1.ResumeScheduleRequest": {"id": REQUIRED_ID},
    "oma.v1.SetBandwidthLimitRequest": {
        "spec": REQUIRED,
        "spec.target.id": ID,
        "spec.windows.start": Text(5),
        "spec.windows.end": Text(5),
        "spec.windows.days": Rule(max_items=7),
        "spec.time_zone": Text(64),
    },
    "oma.v1.GetBandwidthLimitRequest": {"id": REQUIRED_ID},
    "oma.v1.ListBandwidthLimitsRequest": {"target_id": ID},
    "oma.v1.DeleteBandwidthLimitRequest": {"id": REQUIRED_ID},
    "oma.v1.CreateMachineGroupRequest": _GROUP_SPEC,
    "oma.v1.GetMachineGroupRequest": {"id": REQUIRED_ID},
    "oma.v1.ListMachineGroupsRequest": {},
    "oma.v1.UpdateMachineGroupRequest": {**_GROUP_SPEC, "id": REQUIRED_ID},
    "oma.v1.DeleteMachineGroupRequest": {"id": REQUIRED_ID},
    "oma.v1.StartGroupFailoverRequest": {"group_id": REQUIRED_ID},  # the servicer checks the kind
    "oma.v1.CleanupGroupFailoverRequest": {"group_id": REQUIRED_ID},
    "oma.v1.CancelGroupRunRequest": {"id": REQUIRED_ID},
    "oma.v1.GetGroupRunRequest": {"id": REQUIRED_ID},
    "oma.v1.ListGroupRunsRequest": {"group_id": ID},
}


# Fields whose name says what they are, wherever they appear.
def _page_token(value: str, path: str) -> None:
    decode_token(value)


def _page_size(value: int, path: str) -> None:
    page_size_of(value)


def _request_id(value: str, path: str) -> None:
    if value and not _REQUEST_ID_RE.match(value):
        raise InvalidArgument(
            f"{path} must be 1-128 printable ASCII characters without spaces (a client-chosen token, e.g. a UUID)",
            reason="REQUEST_ID_INVALID",
            field=path,
        )


_BY_NAME: dict[str, Callable[[Any, str], None]] = {
    "page_token": _page_token,
    "page_size": _page_size,
    "request_id": _request_id,
}

_UNSIGNED_MAX = {
    FieldDescriptor.TYPE_UINT64: MAX_INT64,
    FieldDescriptor.TYPE_FIXED64: MAX_INT64,
    FieldDescriptor.TYPE_UINT32: MAX_INT32,
    FieldDescriptor.TYPE_FIXED32: MAX_INT32,
}


@dataclass
class _Field:
    name: str
    key: str  # path in RULES (list items without an index)
    descriptor: FieldDescriptor
    rule: Rule
    by_name: Callable[[Any, str], None] | None
    repeated: bool
    message_plan: list[_Field] | None = field(default=None)


class RequestCheck:
    """The compiled checks for every request type; `check(message)` raises InvalidArgument on the first bad field."""

    def __init__(self, rules: Mapping[str, Mapping[str, Rule]] = RULES) -> None:
        self._rules = rules
        self._plans: dict[str, list[_Field]] = {}

    def check(self, message: Message) -> None:
        descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]
        plan = self._plans.get(descriptor.full_name)
        if plan is None:
            plan = self._plans[descriptor.full_name] = self._compile(descriptor)
        _check_message(message, plan, "")

    def _compile(self, descriptor: Descriptor) -> list[_Field]:
        rules = self._rules.get(descriptor.full_name, {})
        plan = _plan(descriptor, "", rules, 0)
        known = _paths(plan)
        unknown = sorted(set(rules) - known)
        if unknown:
            raise KeyError(f"validation rules for {descriptor.full_name} name no field: {unknown}")
        return plan


def _plan(descriptor: Descriptor, prefix: str, rules: Mapping[str, Rule], depth: int) -> list[_Field]:
    plan = []
    for fd in descriptor.fields:
        key = f"{prefix}{fd.name}"
        entry = _Field(
            name=fd.name,
            key=key,
            descriptor=fd,
            rule=rules.get(key, Rule()),
            by_name=_BY_NAME.get(fd.name) if depth == 0 else None,
            repeated=getattr(fd, "label", None) == FieldDescriptor.LABEL_REPEATED,  # `label` is untyped in the stubs
        )
        # Messages nest; recursion is bounded (a self-referencing type such as google.protobuf.Struct stops here).
        if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type is not None and depth < 8:
            entry.message_plan = _plan(fd.message_type, f"{key}.", rules, depth + 1)
        plan.append(entry)
    return plan


def _paths(plan: list[_Field]) -> set[str]:
    out = set()
    for entry in plan:
        out.add(entry.key)
        if entry.message_plan:
            out |= _paths(entry.message_plan)
    return out


def _check_message(message: Message, plan: list[_Field], prefix: str) -> None:
    for entry in plan:
        path = f"{prefix}{entry.name}"
        value = getattr(message, entry.name)
        fd = entry.descriptor
        if entry.repeated:
            limit = entry.rule.max_items or MAX_ITEMS
            if len(value) > limit:
                _fail(entry, path, f"has {len(value)} items; at most {limit} are allowed", "TOO_MANY_ITEMS")
            if entry.rule.required and not value:
                _missing(entry, path, "is required (give at least one item)")
            for i, item in enumerate(value):
                _check_value(entry, fd, item, f"{path}[{i}]")
            continue
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if not message.HasField(entry.name):
                if entry.rule.required:
                    _missing(entry, path, "is required")
                continue
        elif entry.rule.required and not value:
            _missing(entry, path, "is required")
        _check_value(entry, fd, value, path)


def _check_value(entry: _Field, fd: FieldDescriptor, value: Any, path: str) -> None:
    rule = entry.rule
    kind = fd.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        if entry.message_plan is not None:
            _check_message(value, entry.message_plan, f"{path}.")
        return
    if kind == FieldDescriptor.TYPE_STRING:
        limit = rule.max_chars or MAX_CHARS
        if len(value) > limit:
            _fail(entry, path, f"has {len(value)} characters; at most {limit} are allowed", "FIELD_TOO_LONG")
        if "\x00" in value:
            _fail(entry, path, "contains a NUL character", "FIELD_INVALID")
        if rule.pattern is not None and value and not rule.pattern.match(value):
            _fail(entry, path, f"{_show(value)} is not valid", "FIELD_INVALID")
    elif kind == FieldDescriptor.TYPE_BYTES:
        if len(value) > MAX_BYTES:
            _fail(entry, path, f"has {len(value)} bytes; at most {MAX_BYTES} are allowed", "FIELD_TOO_LONG")
    elif kind == FieldDescriptor.TYPE_ENUM:
        enum = fd.enum_type
        if enum is not None and value not in enum.values_by_number:
            names = ", ".join(v.name for v in enum.values if v.number != 0)
            _fail(entry, path, f"{value} is not a {enum.name} value; use one of {names}", "ENUM_VALUE_UNKNOWN")
    elif kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_BOOL):
        pass
    else:
        high = min(rule.high if rule.high is not None else MAX_INT64, _UNSIGNED_MAX.get(kind, MAX_INT64))
        low = rule.low
        if value > high or (low is not None and value < low):
            bounds = f"{low}..{high}" if low is not None else f"at most {high}"
            _fail(entry, path, f"{value} is out of range ({bounds})", "NUMBER_OUT_OF_RANGE")
    if entry.by_name is not None:
        entry.by_name(value, path)


def _fail(entry: _Field, path: str, problem: str, default_reason: str) -> None:
    hint = f"; {entry.rule.hint}" if entry.rule.hint else ""
    raise InvalidArgument(f"{path} {problem}{hint}", reason=entry.rule.reason or default_reason, field=path)


def _missing(entry: _Field, path: str, problem: str) -> None:
    hint = f"; {entry.rule.hint}" if entry.rule.hint else ""
    raise InvalidArgument(f"{path} {problem}{hint}", reason=entry.rule.missing_reason or "FIELD_REQUIRED", field=path)


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def undecodable(type_name: str, error: Exception) -> InvalidArgument:
    """The answer to bytes that are not a message of the RPC's request type."""
    return InvalidArgument(
        f"the request is not a valid {type_name} message ({type(error).__name__}); send the RPC's request type",
        reason="REQUEST_UNDECODABLE",
        type=type_name,
    )
