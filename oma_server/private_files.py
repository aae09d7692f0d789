"""Files only their owner may read (credentials, keys): mode 0600 from their creation, never readable by others."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from its creation (not even for an instant readable by others); an
    existing file is truncated and made 0600 too. OSError as the system raises it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)
