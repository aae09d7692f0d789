"""Names wherever ids are: a VM context, an appliance or a CloudStack network may be given by its name.

An argument is first tried as an id (when it looks like one); if no such resource exists it is looked up by name
through the same API any client uses. A name several resources share is refused with each of them listed, so the
operator can pick an id; a name nothing has is NOT_FOUND with the command that lists what exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from oma.v1 import appliance_pb2, cloud_pb2, vm_context_pb2
from oma_server.omactl.client import CliError
from oma_server.omactl.context import Context

T = TypeVar("T")
# What every id the OMA or CloudStack issues looks like (the server's own rule for id fields).
_ID = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")


def _exists(ctx: Context, stub: object, method: str, request: Message) -> bool:
    try:
        ctx.client.call(stub, method, request)
    except CliError as error:
        if error.text.startswith("NOT_FOUND"):
            return False
        raise
    return True


def _one(found: Sequence[T], what: str, text: str, describe: Callable[[T], str], list_command: str, reason: str) -> T:
    if len(found) == 1:
        return found[0]
    if not found:
        raise CliError(f"NOT_FOUND: no {what} has the id or name {text!r}; list them with '{list_command}' ({reason})")
    choices = ", ".join(describe(item) for item in found)
    raise CliError(
        f"INVALID_ARGUMENT: {len(found)} {what}s are named {text!r}; give the id of one: {choices} (NAME_AMBIGUOUS)"
    )


def vm_id(ctx: Context, text: str) -> str:
    """A VM context id from its id or its VMware name."""
    client = ctx.client
    if _ID.match(text) and _exists(ctx, client.vms, "GetVmContext", vm_context_pb2.GetVmContextRequest(id=text)):
        return text
    every = client.paged(client.vms, "ListVmContexts", vm_context_pb2.ListVmContextsRequest(), lambda r: r.vm_contexts)
    named = [vm for vm in every if vm.name == text]
    return _one(
        named,
        "VM context",
        text,
        lambda vm: f"{vm.id} (vCenter {vm.vcenter}, appliance {vm.appliance_id})",
        "omactl vms list",
        "VM_CONTEXT_NOT_FOUND",
    ).id


def appliance_id(ctx: Context, text: str) -> str:
    """An appliance id from its id or its (unique) name."""
    client = ctx.client
    request = appliance_pb2.GetApplianceRequest(id=text)
    if _ID.match(text) and _exists(ctx, client.appliances, "GetAppliance", request):
        return text
    every = client.paged(
        client.appliances, "ListAppliances", appliance_pb2.ListAppliancesRequest(), lambda r: r.appliances
    )
    named = [a for a in every if a.name == text]
    return _one(named, "appliance", text, lambda a: a.id, "omactl appliances list", "APPLIANCE_NOT_FOUND").id


def network_id(ctx: Context, text: str, zone_id: str = "") -> str:
    """A CloudStack network id from its id or its name (in the OMA's zone unless `zone_id`)."""
    client = ctx.client
    every = list(
        client.paged(client.cloud, "ListNetworks", cloud_pb2.ListNetworksRequest(zone_id=zone_id), lambda r: r.networks)
    )
    by_id = [n for n in every if n.id == text]
    if by_id:
        return text
    named = [n for n in every if n.name == text]
    return _one(
        named,
        "CloudStack network",
        text,
        lambda n: f"{n.id} ({n.type or 'type unknown'}, {n.cidr or 'no CIDR'})",
        "omactl cloud networks",
        "TARGET_NETWORK_NOT_FOUND",
    ).id


def optional(resolve: Callable[[Context, str], str], ctx: Context, text: str | None) -> str:
    """`resolve` for an optional filter flag: empty stays empty."""
    return resolve(ctx, text) if text else ""
