"""`vma-agent`: the reference VMware Migration Appliance (lands with the replication issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("vma-agent: not yet implemented", file=sys.stderr)
    return 2
