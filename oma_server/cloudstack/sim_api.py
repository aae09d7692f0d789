"""The simulator's API plumbing: request parameters with CloudStack's validation texts, list responses with paging,
and the table of command handlers the resource modules register into."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from oma_server.cloudstack.sim_errors import ApiError
from oma_server.cloudstack.sim_state import SimulatorState

_CONTROL_PARAMS = {"command", "apikey", "signature", "signatureversion", "expires", "response", "sessionkey"}
#: commands of CloudStack's admin API (org.apache.cloudstack.api.command.admin.*) the simulator answers
ADMIN_COMMANDS = {"listconfigurations", "listhypervisorcapabilities", "listhosts"}


class Params:
    """Request parameters with CloudStack's validation messages (names are case-insensitive)."""

    def __init__(self, command: str, raw: dict[str, str]) -> None:
        self.command = command.lower()
        self.d = {k.lower(): v for k, v in raw.items() if k.lower() not in _CONTROL_PARAMS}

    def _invalid(self, name: str, value: str) -> ApiError:
        return ApiError(
            431,
            f"Unable to execute API command {self.command} due to invalid value. Invalid parameter {name} "
            f"value={value} due to incorrect long value format, or entity does not exist or due to incorrect "
            "parameter annotation for the field in api cmd class.",
            ApiError.CS_SERVER_API,
        )

    def opt(self, name: str, default: str | None = None) -> str | None:
        value = self.d.get(name)
        return default if value in (None, "") else value

    def req(self, name: str) -> str:
        value = self.d.get(name)
        if value in (None, ""):
            raise ApiError(
                431,
                f"Unable to execute API command {self.command} due to missing parameter {name}",
                ApiError.CS_SERVER_API,
            )
        return str(value)

    def as_int(self, name: str, default: int | None = None) -> int | None:
        value = self.opt(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise self._invalid(name, value) from None

    def as_bool(self, name: str, default: bool) -> bool:
        value = self.opt(name)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise self._invalid(name, value)
        return value.lower() == "true"

    def entity(self, name: str, table: dict[str, dict[str, Any]], *, required: bool = True) -> dict[str, Any]:
        value = self.req(name) if required else self.opt(name)
        if value is None:
            return {}
        row = table.get(value)
        if row is None:
            raise self._invalid(name, value)
        return row

    def indexed(self, prefix: str) -> list[dict[str, str]]:
        """`prefix[0].key=value` parameters as a list of dicts, in index order."""
        found: dict[int, dict[str, str]] = {}
        pattern = re.compile(re.escape(prefix) + r"\[(\d+)\]\.(\w+)$")
        for key, value in self.d.items():
            m = pattern.match(key)
            if m:
                found.setdefault(int(m.group(1)), {})[m.group(2)] = value
        return [found[i] for i in sorted(found)]


def list_response(p: Params, key: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    page = p.as_int("page")
    pagesize = p.as_int("pagesize")
    if page is not None and pagesize is None:
        raise ApiError(431, "Invalid parameter: page requires pagesize", ApiError.CS_INVALID_PARAMETER)
    total = len(rows)
    if page is not None and pagesize is not None and pagesize > 0:
        if page < 1:
            raise ApiError(431, "Invalid parameter page: it must be 1 or more", ApiError.CS_INVALID_PARAMETER)
        rows = rows[(page - 1) * pagesize : page * pagesize]
    if total == 0:
        return {}
    return {"count": total, key: rows}


def public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def filter_rows(rows: list[dict[str, Any]], p: Params, **fields: str) -> list[dict[str, Any]]:
    """Keep rows whose field equals the parameter of the same meaning (param name -> field name)."""
    out = rows
    for param, fieldname in fields.items():
        value = p.opt(param)
        if value is not None:
            out = [r for r in out if str(r.get(fieldname, "")).lower() == value.lower()]
    keyword = p.opt("keyword")
    if keyword:
        out = [r for r in out if keyword.lower() in str(r.get("name", "")).lower()]
    return out


Handler = Callable[[SimulatorState, Params], dict[str, Any]]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name.lower()] = fn
        return fn

    return register
