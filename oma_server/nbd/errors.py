"""Domain errors of the NBD export manager (subclasses of oma_server.errors; no grpc here)."""

from __future__ import annotations

from oma_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable


class ExportNameInvalid(InvalidArgument):
    """An export name that could escape the export directory or mislead an NBD client."""

    default_reason = "NBD_EXPORT_NAME_INVALID"


class DevicePathInvalid(InvalidArgument):
    """A device path that is not absolute or contains characters an export link cannot carry."""

    default_reason = "NBD_DEVICE_PATH_INVALID"


class DeviceMissing(FailedPrecondition):
    """The device (or its symlink target) does not exist: the volume is not attached yet."""

    default_reason = "NBD_DEVICE_MISSING"


class DeviceUnsuitable(FailedPrecondition):
    """The path exists but is neither a block device nor a regular file (a directory, a fifo, ...)."""

    default_reason = "NBD_DEVICE_UNSUITABLE"


class ExportExists(AlreadyExists):
    default_reason = "NBD_EXPORT_EXISTS"


class DeviceAlreadyExported(AlreadyExists):
    """The same device is already served under another export name; two writers would corrupt it."""

    default_reason = "NBD_DEVICE_ALREADY_EXPORTED"


class ExportNotFound(NotFound):
    default_reason = "NBD_EXPORT_NOT_FOUND"


class ExportInUse(FailedPrecondition):
    """An export still has connected NBD clients and removal was not forced."""

    default_reason = "NBD_EXPORT_IN_USE"


class NbdServerUnavailable(Unavailable):
    """nbdkit cannot be started or does not answer the NBD handshake."""

    default_reason = "NBD_SERVER_UNAVAILABLE"


class NbdPortInUse(Unavailable):
    """Another program (not the nbdkit of this manager) listens on the NBD port."""

    default_reason = "NBD_PORT_IN_USE"
