"""Labels of job kinds, statuses, phases and errors, shared by the jobs, watch and failover commands."""

from __future__ import annotations

from oma.common.v1 import jobs_pb2
from oma.v1 import failover_pb2, replication_pb2
from oma_server.omactl import render
from oma_server.omactl.render import enum_label

STATUS_PREFIX = "REPLICATION_JOB_STATUS"
KIND_PREFIX = "REPLICATION_JOB_KIND"


def job_status(job: replication_pb2.ReplicationJob) -> str:
    return enum_label(replication_pb2.ReplicationJobStatus, job.status, STATUS_PREFIX)


def job_kind(job: replication_pb2.ReplicationJob) -> str:
    return enum_label(replication_pb2.ReplicationJobKind, job.kind, KIND_PREFIX)


def phase(value: int) -> str:
    return enum_label(jobs_pb2.CopyPhase, value, "COPY_PHASE")


def failover_status(job: failover_pb2.FailoverJob) -> str:
    return enum_label(failover_pb2.FailoverJobStatus, job.status, "FAILOVER_JOB_STATUS")


def failover_kind(job: failover_pb2.FailoverJob) -> str:
    return enum_label(failover_pb2.FailoverJobKind, job.kind, "FAILOVER_JOB_KIND")


def step_status(step: failover_pb2.FailoverStep) -> str:
    return enum_label(failover_pb2.StepStatus, step.status, "STEP_STATUS")


def error_text(error: jobs_pb2.JobError) -> str:
    if not (error.reason or error.message):
        return render.NONE
    text = error.message or "no detail"
    extra = [error.reason] if error.reason else []
    if error.error_class:
        extra.append(enum_label(jobs_pb2.ErrorClass, error.error_class, "ERROR_CLASS"))
    return f"{text} ({', '.join(extra)})" if extra else text
