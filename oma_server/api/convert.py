"""Model ↔ message conversion, shared by every servicer."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from oma.v1 import appliance_pb2
from oma_server.db.models import Appliance


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A naive-UTC datetime as a Timestamp (None stays unset)."""
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.replace(tzinfo=UTC) if value.tzinfo is None else value)
    return out


def enum_value(enum_type: object, prefix: str, name: str) -> int:
    """'replicating' → ENUM value for PREFIX_REPLICATING (0 when empty or unknown)."""
    if not name:
        return 0
    try:
        return int(enum_type.Value(f"{prefix}_{name.upper()}"))  # type: ignore[attr-defined]
    except ValueError:
        return 0


def enum_name(enum_type: object, prefix: str, value: int) -> str:
    """ENUM value → 'replicating' ('' for the UNSPECIFIED zero value)."""
    if not value:
        return ""
    return str(enum_type.Name(value)).removeprefix(f"{prefix}_").lower()  # type: ignore[attr-defined]


def appliance_to_proto(row: Appliance) -> appliance_pb2.Appliance:
    return appliance_pb2.Appliance(
        id=row.id,
        name=row.name,
        status=enum_value(appliance_pb2.ApplianceStatus, "APPLIANCE_STATUS", row.status),  # type: ignore[arg-type]
        connection_state=enum_value(  # type: ignore[arg-type]
            appliance_pb2.ConnectionState, "CONNECTION_STATE", row.connection_state
        ),
        agent_version=row.agent_version,
        capabilities=list(row.capabilities or []),
        last_seen_at=ts(row.last_seen_at),
        created_at=ts(row.created_at),
        connected_to=row.connected_to,
        session_id=row.session_id,
    )
