"""Reading the OMA's errors on the client side: the `google.rpc.ErrorInfo` the server puts in every failed call, and
the typed details beside it.

The server (`oma_server.api.status`) answers each refusal with a status whose details hold one ErrorInfo (AIP-193:
an UPPER_SNAKE reason, the domain `oma.control-plane`, metadata naming the resource) and, where a client must act on
the content, typed details: `BadRequest` (the field of a bad request), `PreconditionFailure` (the failed readiness
checks of StartFailover, the active job that blocks a start), `ResourceInfo` (the resource the error is about).
This is the one place a client — a VMA, omactl, a script — takes them out again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2


def _details(call_error: grpc.RpcError) -> list[any_pb2.Any]:
    trailing = call_error.trailing_metadata() or ()  # type: ignore[attr-defined]
    for key, value in trailing:
        if key == "grpc-status-details-bin":
            return list(status_pb2.Status.FromString(value).details)
    return []


def error_info_of(call_error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo in a failed call's status details, if any (sync and asyncio calls alike)."""
    return error_details_of(call_error).info


@dataclass
class ErrorDetails:
    """Every detail of a failed call, decoded; empty lists (and `info` None) when the call carries none."""

    info: error_details_pb2.ErrorInfo | None = None
    #: the fields of a bad request (INVALID_ARGUMENT): `field` is the path, `description` what is wrong
    field_violations: list[error_details_pb2.BadRequest.FieldViolation] = field(default_factory=list)
    #: unmet preconditions (FAILED_PRECONDITION): `type` READINESS_CHECK (subject: the check) or JOB_ALREADY_ACTIVE
    #: (subject: `jobs/<id>`)
    precondition_violations: list[error_details_pb2.PreconditionFailure.Violation] = field(default_factory=list)
    #: the resources the error is about (`resource_type` such as "oma.v1.Job", `resource_name` its id)
    resources: list[error_details_pb2.ResourceInfo] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.info.reason if self.info is not None else ""

    def failed_checks(self) -> dict[str, str]:
        """Readiness checks that failed: name → why."""
        return {v.subject: v.description for v in self.precondition_violations if v.type == "READINESS_CHECK"}

    def active_job_id(self) -> str:
        """The id of the job that blocks a start, empty when none does."""
        for v in self.precondition_violations:
            if v.type == "JOB_ALREADY_ACTIVE":
                return v.subject.removeprefix("jobs/")
        return ""


def error_details_of(call_error: grpc.RpcError) -> ErrorDetails:
    """The decoded details of a failed call (sync and asyncio calls alike)."""
    out = ErrorDetails()
    for detail in _details(call_error):
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        pre = error_details_pb2.PreconditionFailure()
        res = error_details_pb2.ResourceInfo()
        if detail.Unpack(info):
            out.info = out.info or info
        elif detail.Unpack(bad):
            out.field_violations.extend(bad.field_violations)
        elif detail.Unpack(pre):
            out.precondition_violations.extend(pre.violations)
        elif detail.Unpack(res):
            out.resources.append(res)
    return out
