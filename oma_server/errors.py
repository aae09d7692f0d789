"""Domain errors: what business logic raises. No grpc import here.

Every error carries a status category, a stable UPPER_SNAKE reason (AIP-193 ErrorInfo.reason) and metadata
naming the thing that failed. `oma_server.api.status` is the one place that turns them into gRPC status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Category(Enum):
    """Status categories; they map one-to-one onto gRPC status codes in oma_server.api.status."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class Violation:
    """One unmet precondition a client can act on (google.rpc.PreconditionFailure.Violation): `kind` is an
    UPPER_SNAKE type (READINESS_CHECK, JOB_ALREADY_ACTIVE), `subject` what failed (a check's name, `jobs/<id>`)."""

    kind: str
    subject: str
    description: str


@dataclass(frozen=True)
class Resource:
    """The resource an error is about (google.rpc.ResourceInfo): its proto type and id."""

    type: str
    name: str
    description: str = ""


class DomainError(Exception):
    """Base of every error the control plane reports to a caller.

    `message` is for a human and says what failed and what to do; `reason` is for programs, and so are the typed
    `violations` and `resource` (the API sends them as google.rpc details beside ErrorInfo).
    """

    category: Category = Category.INTERNAL
    default_reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: Iterable[Violation] = (),
        resource: Resource | None = None,
        **metadata: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.violations = tuple(violations)
        self.resource = resource
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items() if v is not None}

    def __str__(self) -> str:
        return self.message


class InvalidArgument(DomainError):
    category = Category.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(DomainError):
    category = Category.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    category = Category.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    category = Category.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Unauthenticated(DomainError):
    category = Category.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    category = Category.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(DomainError):
    category = Category.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    """A dependency (database, CloudStack, nbd-server) cannot be reached now; retrying later may work."""

    category = Category.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    category = Category.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Aborted(DomainError):
    category = Category.ABORTED
    default_reason = "ABORTED"


class OutOfRange(DomainError):
    category = Category.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class Unimplemented(DomainError):
    category = Category.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(DomainError):
    category = Category.INTERNAL
    default_reason = "INTERNAL"


def job_already_active(message: str, active_job_id: str, **metadata: Any) -> FailedPrecondition:
    """A job cannot start because another one runs on the same VM: its id in metadata, PreconditionFailure and
    ResourceInfo, so a client can watch or cancel it without parsing the message."""
    return FailedPrecondition(
        message,
        reason="JOB_ALREADY_ACTIVE",
        violations=[Violation("JOB_ALREADY_ACTIVE", f"jobs/{active_job_id}", message)],
        resource=Resource("oma.v1.Job", active_job_id, "the active job"),
        active_job_id=active_job_id,
        **metadata,
    )


class MessageRejected(Exception):
    """One message on an appliance's stream cannot be applied; nothing of it was. Answered with a StreamError, the
    stream stays up. `code` is a StreamErrorCode name suffix (INVALID_MESSAGE, UNKNOWN_JOB, ...)."""

    def __init__(self, code: str, message: str, job_id: str = "", sequence: int = 0, command_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id
        self.sequence = sequence
        self.command_id = command_id
