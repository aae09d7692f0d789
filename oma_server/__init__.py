"""OMA control plane: the gRPC service that drives VMware to CloudStack migrations."""

from oma_server.version import __version__

__all__ = ["__version__"]
