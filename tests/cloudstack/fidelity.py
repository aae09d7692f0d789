"""The fidelity fixtures (tests/fixtures/cloudstack): loading them, and comparing an answer with one field by field.

Each fixture is one documented CloudStack answer: `_source` cites where it comes from, `_versions` the releases it
describes, `_http_status` its status (200 when absent), `_optional` the documented fields a real answer may leave out
(deployment- or role-dependent), `_since` the release that added a field. A field is named alone (anywhere in the
answer) or by its path from the envelope (`$.account`: the job's own, not its volume's). The one remaining key is the
envelope.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oma_server.cloudstack.sim_state import version_tuple

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cloudstack"


@dataclass(frozen=True)
class Fixture:
    name: str
    status: int
    envelope: str
    body: dict[str, Any]
    sources: list[str]
    optional: frozenset[str]
    since: dict[str, str]

    def too_new(self, path: str, key: str, version: str) -> str:
        """The release that added the field at `path`.`key`, when it is later than `version`; else empty."""
        added = self.since.get(f"{path}.{key}") or self.since.get(key)
        return added if added and version_tuple(added) > version_tuple(version) else ""

    def is_optional(self, path: str, key: str) -> bool:
        return key in self.optional or f"{path}.{key}" in self.optional


def load(name: str) -> Fixture:
    doc = json.loads((FIXTURES / name).read_text())
    [(envelope, body)] = [(k, v) for k, v in doc.items() if not k.startswith("_")]
    sources = doc["_source"] if isinstance(doc["_source"], list) else [doc["_source"]]
    return Fixture(
        name=name,
        status=int(doc.get("_http_status", 200)),
        envelope=envelope,
        body=body,
        sources=sources,
        optional=frozenset(doc.get("_optional", ())),
        since=dict(doc.get("_since", {})),
    )


def all_fixtures() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.json"))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def differences(fixture: Fixture, actual: Any, version: str) -> list[str]:
    """Every way `actual` (a whole answer body) differs from the documented one: a field the documented answer does
    not have (invented), a documented field missing (unless optional), a different JSON type, a field sent before the
    release that added it."""
    problems: list[str] = []

    def walk(doc: Any, got: Any, path: str) -> None:
        if _kind(doc) != _kind(got):
            problems.append(f"{path}: {_kind(got)} where CloudStack sends {_kind(doc)}")
            return
        if isinstance(doc, dict):
            for key in sorted(set(got) - set(doc)):
                problems.append(f"{path}.{key}: not in CloudStack's answer (invented)")
            for key, value in doc.items():
                added = fixture.too_new(path, key, version)
                if key not in got:
                    if not fixture.is_optional(path, key) and not added:
                        problems.append(f"{path}.{key}: missing (CloudStack sends it)")
                    continue
                if added:
                    problems.append(f"{path}.{key}: sent, but CloudStack adds it only in {added}")
                walk(value, got[key], f"{path}.{key}")
        elif isinstance(doc, list) and doc and got:
            walk(doc[0], got[0], f"{path}[0]")

    walk(fixture.body, actual, "$")
    return problems


def without_optional(fixture: Fixture) -> dict[str, Any]:
    """The documented answer with every optional field removed, at any depth: what the adapter may rely on."""

    def strip(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: strip(v, f"{path}.{k}") for k, v in value.items() if not fixture.is_optional(path, k)}
        if isinstance(value, list):
            return [strip(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    return dict(strip(fixture.body, "$"))
