"""The one version of the product, read from VERSION.txt (the single source of truth)."""

from importlib import metadata
from pathlib import Path

_VERSION_FILE = Path(__file__).resolve().parent.parent / "VERSION.txt"


def _read_version() -> str:
    if _VERSION_FILE.is_file():
        return _VERSION_FILE.read_text().strip()
    try:  # installed from a wheel: VERSION.txt was baked into the metadata
        return metadata.version("oma-control-plane")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


__version__ = _read_version()
