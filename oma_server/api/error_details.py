"""The typed google.rpc details an error carries beside its ErrorInfo (AIP-193), for clients that must act on them.

- `BadRequest` with one field violation for every INVALID_ARGUMENT that names its field (every request check of
  `oma_server.api.validation` does, and so do the services' own checks): the field path and what is wrong.
- `PreconditionFailure` with the error's violations: each failed readiness check of StartFailover (type
  READINESS_CHECK, subject the check's name), the active job that blocks a start (type JOB_ALREADY_ACTIVE, subject
  `jobs/<id>`).
- `ResourceInfo` for the resource an error is about: the one the error names, or for NOT_FOUND the resource its
  metadata names (a job, VM context, appliance, network mapping, volume or export).
"""

from __future__ import annotations

from google.protobuf.message import Message
from google.rpc import error_details_pb2

from oma_server.errors import Category, DomainError

# NOT_FOUND metadata key → the proto type of what was not found.
_NOT_FOUND_TYPES = {
    "job_id": "oma.v1.Job",
    "vm_context_id": "oma.v1.VmContext",
    "appliance_id": "oma.v1.Appliance",
    "mapping_id": "oma.v1.NetworkMapping",
    "volume_id": "oma.v1.Volume",
    "export": "oma.v1.NbdExport",
}


def details_of(error: DomainError) -> list[Message]:
    """The typed details of `error`, in the order AIP-193 lists them (after the ErrorInfo the caller adds)."""
    details: list[Message] = []
    field = error.metadata.get("field")
    if error.category == Category.INVALID_ARGUMENT and field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=error.message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if error.violations:
        details.append(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=v.kind, subject=v.subject, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if error.resource is not None:
        r = error.resource
        details.append(
            error_details_pb2.ResourceInfo(resource_type=r.type, resource_name=r.name, description=r.description)
        )
    elif error.category == Category.NOT_FOUND:
        for key, resource_type in _NOT_FOUND_TYPES.items():
            if name := error.metadata.get(key):
                details.append(
                    error_details_pb2.ResourceInfo(
                        resource_type=resource_type, resource_name=name, description="not found"
                    )
                )
                break
    return details
