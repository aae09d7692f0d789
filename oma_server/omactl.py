"""`omactl`: the operator CLI on the oma.v1 API (lands with the replication issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("omactl: not yet implemented", file=sys.stderr)
    return 2
