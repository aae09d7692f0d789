"""omactl jobs list|show|log and omactl replicate start|cancel|retry."""

from __future__ import annotations

import argparse

from oma.common.v1 import jobs_pb2
from oma.v1 import failover_pb2, job_pb2, replication_pb2
from oma_server.omactl import render
from oma_server.omactl.client import CliError
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.labels import (
    KIND_PREFIX,
    STATUS_PREFIX,
    error_text,
    failover_kind,
    failover_status,
    job_kind,
    job_status,
    phase,
    step_status,
)
from oma_server.omactl.render import (
    elapsed,
    enum_choices,
    enum_label,
    enum_parse,
    field_duration,
    field_time,
    rate,
    size,
    status_text,
)
from oma_server.omactl.watch import follow_job


def progress_text(done: int, total: int) -> str:
    return f"{size(done)} / {size(total)}" if total else size(done)


# ---- show ---------------------------------------------------------------------------------------------------------
def show_replication_job(ctx: Context, job: replication_pb2.ReplicationJob) -> None:
    ctx.out.fields(
        [
            ("id", job.id),
            ("kind", f"replication ({job_kind(job)})"),
            ("status", status_text(job_status(job))),
            ("vm context", job.vm_context_id),
            ("appliance", job.appliance_id),
            ("phase", phase(job.phase)),
            ("operation", job.current_operation or render.NONE),
            ("progress", f"{job.percent:.1f} %  {progress_text(job.bytes_done, job.bytes_total)}"),
            ("throughput", rate(job.throughput_bytes_per_second)),
            ("eta", field_duration(job, "eta")),
            ("created", field_time(job, "created_at")),
            ("started", field_time(job, "started_at")),
            ("finished", field_time(job, "finished_at")),
            ("elapsed", elapsed(job.started_at, job.finished_at) if job.HasField("started_at") else render.NONE),
            ("retry of", job.retry_of or render.NONE),
            ("error", error_text(job.error)),
            ("revision", job.revision),
        ]
    )
    ctx.out.line()
    ctx.out.table(
        ["DISK ID", "KEY", "MODE", "PHASE", "PROGRESS", "THROUGHPUT", "DONE", "CHANGE ID", "NOTE"],
        (
            [
                d.disk_id,
                d.disk_key,
                enum_label(jobs_pb2.CopyMode, d.mode, "COPY_MODE"),
                phase(d.phase),
                progress_text(d.bytes_done, d.bytes_total),
                rate(d.throughput_bytes_per_second),
                "yes" if d.completed else "no",
                d.new_change_id or d.previous_change_id or render.NONE,
                d.full_copy_reason or "",
            ]
            for d in job.disks
        ),
        title="Disks",
    )


def show_failover_job(ctx: Context, job: failover_pb2.FailoverJob) -> None:
    ctx.out.fields(
        [
            ("id", job.id),
            ("kind", f"failover ({failover_kind(job)})"),
            ("status", status_text(failover_status(job))),
            ("vm context", job.vm_context_id),
            ("current step", job.current_step or render.NONE),
            ("target vm", f"{job.target_vm_name or render.NONE} ({job.target_vm_id or 'not deployed'})"),
            ("snapshots", ", ".join(job.snapshot_ids) or render.NONE),
            ("created", field_time(job, "created_at")),
            ("finished", field_time(job, "finished_at")),
            ("error", error_text(job.error)),
            ("revision", job.revision),
        ]
    )
    ctx.out.line()
    ctx.out.table(
        ["STEP", "STATUS", "STARTED", "FINISHED", "ATTEMPTS", "ERROR"],
        (
            [
                s.name,
                status_text(step_status(s)),
                field_time(s, "started_at"),
                field_time(s, "finished_at"),
                s.attempts,
                s.error or "",
            ]
            for s in job.steps
        ),
        title="Steps",
    )


def started_line(ctx: Context, verb: str, job: replication_pb2.ReplicationJob) -> None:
    if ctx.out.as_json:
        ctx.out.message(job)
    else:
        ctx.out.line(f"{verb} {job_kind(job)} replication job {job.id} for VM {job.vm_context_id} ({job_status(job)})")


# ---- commands -----------------------------------------------------------------------------------------------------
def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    request = replication_pb2.ListReplicationJobsRequest(vm_context_id=args.vm or "", appliance_id=args.appliance or "")
    for status in args.status or []:
        request.statuses.append(enum_parse(replication_pb2.ReplicationJobStatus, STATUS_PREFIX, status))  # type: ignore[arg-type]
    items = list(ctx.client.paged(ctx.client.replication, "ListReplicationJobs", request, lambda r: list(r.jobs)))
    if ctx.out.as_json:
        ctx.out.messages(items)
        return 0
    ctx.out.table(
        ["ID", "VM", "KIND", "STATUS", "PROGRESS", "BYTES", "THROUGHPUT", "CREATED", "FINISHED"],
        (
            [
                j.id,
                j.vm_context_id,
                job_kind(j),
                status_text(job_status(j)),
                f"{j.percent:.1f} %",
                progress_text(j.bytes_done, j.bytes_total),
                rate(j.throughput_bytes_per_second),
                field_time(j, "created_at"),
                field_time(j, "finished_at"),
            ]
            for j in items
        ),
        title="Replication jobs",
    )
    return 0


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    try:
        reply = ctx.client.call(
            ctx.client.replication, "GetReplicationJob", replication_pb2.GetReplicationJobRequest(id=args.job_id)
        )
    except CliError as not_replication:
        if not not_replication.text.startswith("NOT_FOUND"):
            raise
        try:  # maybe a failover job
            failover = ctx.client.call(
                ctx.client.failover, "GetFailoverJob", failover_pb2.GetFailoverJobRequest(id=args.job_id)
            )
        except CliError:
            raise not_replication from None
        if ctx.out.as_json:
            ctx.out.message(failover.job)
        else:
            show_failover_job(ctx, failover.job)
        return 0
    if ctx.out.as_json:
        ctx.out.message(reply.job)
    else:
        show_replication_job(ctx, reply.job)
    return 0


def cmd_log(ctx: Context, args: argparse.Namespace) -> int:
    request = job_pb2.ListJobLogEntriesRequest(job_id=args.job_id)
    entries = list(ctx.client.paged(ctx.client.jobs, "ListJobLogEntries", request, lambda r: list(r.entries)))
    if ctx.out.as_json:
        ctx.out.messages(entries)
        return 0
    ctx.out.table(
        ["#", "STEP", "STATUS", "STARTED", "FINISHED", "TOOK", "MESSAGE"],
        (
            [
                e.id,
                e.step,
                status_text(enum_label(job_pb2.JobLogStatus, e.status, "JOB_LOG_STATUS")),
                field_time(e, "started_at"),
                field_time(e, "finished_at"),
                elapsed(e.started_at, e.finished_at) if e.HasField("finished_at") else render.NONE,
                e.message,
            ]
            for e in entries
        ),
        title=f"Log entries of job {args.job_id}",
    )
    return 0


def cmd_start(ctx: Context, args: argparse.Namespace) -> int:
    request = replication_pb2.StartReplicationRequest(vm_context_id=args.vm_id, request_id=args.request_id or "")
    if args.kind:
        request.kind = enum_parse(replication_pb2.ReplicationJobKind, KIND_PREFIX, args.kind)  # type: ignore[assignment]
    reply = ctx.client.call(ctx.client.replication, "StartReplication", request)
    if args.watch:
        if not ctx.out.as_json:
            started_line(ctx, "Started", reply.job)
        return follow_job(ctx, reply.job.id)
    started_line(ctx, "Started", reply.job)
    return 0


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    request = replication_pb2.CancelReplicationJobRequest(id=args.job_id)
    job = ctx.client.call(ctx.client.replication, "CancelReplicationJob", request).job
    if ctx.out.as_json:
        ctx.out.message(job)
    else:
        ctx.out.line(f"Job {job.id} is {job_status(job)}; its volumes and exports stay for the next run.")
    return 0


def cmd_retry(ctx: Context, args: argparse.Namespace) -> int:
    request = replication_pb2.RetryReplicationJobRequest(id=args.job_id)
    job = ctx.client.call(ctx.client.replication, "RetryReplicationJob", request).job
    if args.watch:
        if not ctx.out.as_json:
            started_line(ctx, f"Retrying {args.job_id} as", job)
        return follow_job(ctx, job.id)
    started_line(ctx, f"Retrying {args.job_id} as", job)
    return 0


def register(commands: Commands) -> None:
    statuses = enum_choices(replication_pb2.ReplicationJobStatus, STATUS_PREFIX)
    group = commands.group("jobs", "replication and failover jobs: list, inspect, read their log")
    listing = commands.leaf(group, "list", "list replication jobs, newest first", cmd_list)
    listing.add_argument("--vm", metavar="ID", help="only jobs of this VM context")
    listing.add_argument("--appliance", metavar="ID", help="only jobs of this appliance")
    listing.add_argument(
        "--status",
        metavar="S",
        nargs="+",
        action="extend",
        choices=statuses,
        help="only jobs in these statuses: %(choices)s",
    )
    show = commands.leaf(group, "show", "show one job (replication or failover) with its disks or steps", cmd_show)
    show.add_argument("job_id", metavar="JOB_ID")
    log = commands.leaf(group, "log", "the job's log: every step with status, times and message", cmd_log)
    log.add_argument("job_id", metavar="JOB_ID")

    group = commands.group("replicate", "start, cancel and retry replication of a VM's disks")
    start = commands.leaf(group, "start", "start a replication job for a VM context", cmd_start)
    start.add_argument("vm_id", metavar="VM_ID", help="VM context id")
    start.add_argument(
        "--kind",
        choices=["initial", "incremental"],
        help="full copy or changed blocks only (default: the server chooses)",
    )
    start.add_argument("--request-id", metavar="X", help="idempotency key: the same key returns the same job")
    start.add_argument("--watch", action="store_true", help="follow the job until it ends (exit 1 unless completed)")
    cancel = commands.leaf(group, "cancel", "cancel a job (volumes and exports stay)", cmd_cancel)
    cancel.add_argument("job_id", metavar="JOB_ID")
    retry = commands.leaf(group, "retry", "start a new job like a failed or cancelled one", cmd_retry)
    retry.add_argument("job_id", metavar="JOB_ID")
    retry.add_argument("--watch", action="store_true", help="follow the new job until it ends")
