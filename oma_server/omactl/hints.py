"""Hints that name omactl commands, for the server's errors when the caller is omactl.

The server speaks to every client in its API's words ("list them with ListVmContexts"); an operator at a shell
wants the command to type. Here the error's text has each RPC it names replaced by the omactl command doing the
same, with the VM, job or appliance of the error's metadata filled in; a reason whose text gives no hint gets the
command that helps (`REASON_HINTS`). A test checks that every RPC a server message names has its command here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# RPC (as the server's messages name it) → the omactl command; {vm}, {job}, {appliance} come from ErrorInfo.
COMMANDS: dict[str, str] = {
    "RollbackFailover with power_on_source": "omactl rollback {vm} --power-on-source",
    "ListVmContexts": "omactl vms list",
    "GetVmContext": "omactl vms show {vm}",
    "RegisterVmContext": "omactl vms discover --appliance {appliance} --register",
    "DiscoverVms": "omactl vms discover --appliance {appliance}",
    "StartReplication": "omactl replicate start {vm}",
    "RetryReplicationJob": "omactl replicate retry {job}",
    "ListReplicationJobs": "omactl jobs list",
    "ListFailoverJobs": "omactl jobs list",
    "ListJobs": "omactl jobs list",
    "GetReplicationJob": "omactl jobs show {job}",
    "GetFailoverJob": "omactl jobs show {job}",
    "GetJob": "omactl jobs show {job}",
    "CancelJob": "omactl jobs cancel {job}",
    "CancelReplicationJob": "omactl jobs cancel {job}",
    "CheckFailoverReadiness": "omactl preflight {vm}",
    "StartFailover": "omactl failover test|live {vm}",
    "CleanupFailover": "omactl failover cleanup {vm}",
    "RollbackFailover": "omactl rollback {vm}",
    "CreateNetworkMapping": "omactl network-map create",
    "ListNetworkMappings": "omactl network-map list",
    "UpdateNetworkMapping": "omactl network-map update",
    "PowerOnSourceVm": "omactl vms power-on {vm}",
    "PowerOffSourceVm": "omactl vms power-off {vm}",
    "VerifyVmContext": "omactl vms verify {vm}",
    "ListAppliances": "omactl appliances list",
    "EnrollAppliance": "omactl appliances enroll NAME",
    "ListNetworks": "omactl cloud networks",
    "ListTemplates": "omactl cloud templates",
    "ListServiceOfferings": "omactl cloud offerings",
}

# Reason → what to run, for errors whose text names no RPC.
REASON_HINTS: dict[str, str] = {
    "VM_CONTEXT_NOT_FOUND": "list them with 'omactl vms list'",
    "APPLIANCE_NOT_FOUND": "list them with 'omactl appliances list'",
    "JOB_NOT_FOUND": "list them with 'omactl jobs list'",
    "NETWORK_MAPPING_NOT_FOUND": "list them with 'omactl network-map list'",
    "TARGET_NETWORK_NOT_FOUND": "list them with 'omactl cloud networks'",
    "APPLIANCE_DISCONNECTED": "'omactl appliances list' shows its connection",
    "FAILOVER_NOT_READY": "'omactl preflight {vm}' shows every check",
    "APPLIANCE_MAY_ANSWER": "cancel without --force and give it a minute: 'omactl jobs cancel {job}'",
    "JOB_ALREADY_ACTIVE": "follow it with 'omactl watch {active_job}', stop it with 'omactl jobs cancel {active_job}'",
}

_RPC = re.compile(
    r"(?:\b\w+Service[./])?\b("
    + "|".join(re.escape(name) for name in sorted(COMMANDS, key=len, reverse=True))
    + r")\b(?: \(\w+Service\))?"
)


def _fill(template: str, metadata: Mapping[str, str]) -> str:
    values = {
        "vm": metadata.get("vm_context_id") or "VM",
        "job": metadata.get("job_id") or "JOB",
        "active_job": metadata.get("active_job_id") or "JOB",
        "appliance": metadata.get("appliance_id") or "APPLIANCE",
    }
    return template.format(**values)


def for_omactl(message: str, reason: str, metadata: Mapping[str, str]) -> str:
    """The server's message with omactl commands in place of RPCs, plus the reason's hint when it has none."""
    text = _RPC.sub(lambda m: f"'{_fill(COMMANDS[m.group(1)], metadata)}'", message)
    hint = REASON_HINTS.get(reason)
    if hint and "omactl " not in text:
        text = f"{text.rstrip('.')}; {_fill(hint, metadata)}"
    return text
