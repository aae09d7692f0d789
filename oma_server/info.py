"""What the server tells about itself (GetServerInfo, the dashboard): a plain value the App fills."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ServerInfo:
    version: str
    database_kind: str
    cloudstack_kind: str
    started_at: datetime
    schema_version: int
    process_id: str
