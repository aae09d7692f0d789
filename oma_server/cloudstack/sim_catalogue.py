"""The simulator's read-only catalogue: zones, hosts, offerings, networks, templates, and what the cloud allows
(listCapabilities, listConfigurations, listHypervisorCapabilities)."""

from __future__ import annotations

from typing import Any

from oma_server.cloudstack.sim_api import Params, command, filter_rows, list_response
from oma_server.cloudstack.sim_errors import ApiError
from oma_server.cloudstack.sim_seed import config_category
from oma_server.cloudstack.sim_state import SimulatorState


def _table_list(name: str, table: str, key: str, *filters: str) -> None:
    """Register a list command that answers the rows of one table, filtered by the named fields."""

    def handler(state: SimulatorState, p: Params) -> dict[str, Any]:
        rows = filter_rows(list(getattr(state, table).values()), p, id="id", name="name", **{f: f for f in filters})
        return list_response(p, key, rows)

    command(name)(handler)


_table_list("listZones", "zones", "zone")
_table_list("listServiceOfferings", "service_offerings", "serviceoffering")
_table_list("listDiskOfferings", "disk_offerings", "diskoffering")
_table_list("listNetworks", "networks", "network", "zoneid", "type")
_table_list("listHosts", "hosts", "host", "zoneid", "type")


@command("listTemplates")
def _list_templates(state: SimulatorState, p: Params) -> dict[str, Any]:
    templatefilter = p.req("templatefilter")
    allowed = ("featured", "self", "selfexecutable", "sharedexecutable", "executable", "community", "all")
    if templatefilter not in allowed:
        raise ApiError(
            431,
            f"No enum constant com.cloud.template.VirtualMachineTemplate.TemplateFilter.{templatefilter}",
            ApiError.CS_SERVER_API,
        )
    rows = filter_rows(list(state.templates.values()), p, id="id", name="name", zoneid="zoneid")
    return list_response(p, "template", rows)


@command("listCapabilities")
def _list_capabilities(state: SimulatorState, p: Params) -> dict[str, Any]:
    """CapabilitiesResponse: what any account may read about the cloud, the custom disk size range among it."""
    return {
        "capability": {
            "cloudstackversion": state.cloudstack_version,
            "customdiskofferingminsize": state.config_int("custom.diskoffering.size.min"),
            "customdiskofferingmaxsize": state.config_int("custom.diskoffering.size.max"),
            "securitygroupsenabled": False,
            "kvmsnapshotenabled": True,
            "dynamicrolesenabled": True,
            "userpublictemplateenabled": True,
            "allowusercreateprojects": True,
            "allowuserviewdestroyedvm": False,
            "allowuserexpungerecovervm": False,
            "allowuserexpungerecovervolume": True,
            "projectinviterequired": False,
            "regionsecondaryenabled": False,
            "supportELB": "false",
            "defaultuipagesize": 20,
            "apilimitinterval": 1,
            "apilimitmax": 0,
        }
    }


@command("listConfigurations")
def _list_configurations(state: SimulatorState, p: Params) -> dict[str, Any]:
    """ConfigurationResponse rows of the global settings (a root-admin command)."""
    rows: list[dict[str, Any]] = []
    for name, value in sorted(state.configurations.items()):
        category, description = config_category(name)
        rows.append(
            {
                "category": category,
                "name": name,
                "value": value,
                "description": description,
                "isdynamic": True,
                "scope": "global",
                "component": "VolumeOrchestrationService",
                "type": "Number",
            }
        )
    wanted = p.opt("name")
    if wanted:
        # CloudStack matches the name parameter as a substring (ConfigurationManagerImpl.searchForConfigurations)
        rows = [r for r in rows if wanted.lower() in r["name"].lower()]
    return list_response(p, "configuration", filter_rows(rows, p, category="category"))


@command("listHypervisorCapabilities")
def _list_hypervisor_capabilities(state: SimulatorState, p: Params) -> dict[str, Any]:
    """HypervisorCapabilitiesResponse rows; the list key is `hypervisorCapabilities` (camel case), as
    ListHypervisorCapabilitiesCmd sets it with setObjectName."""
    rows = filter_rows(list(state.hypervisor_capabilities), p, id="id", hypervisor="hypervisor")
    return list_response(p, "hypervisorCapabilities", rows)
