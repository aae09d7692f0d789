"""omactl jobs list|show|log and omactl replicate start|cancel|retry."""

from __future__ import annotations

import argparse

from oma.common.v1 import jobs_pb2
from oma.v1 import failover_pb2, job_pb2, replication_pb2, vm_context_pb2
from oma_server.omactl import render, resolve
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


def _timing_fields(job: failover_pb2.FailoverJob) -> list[tuple[str, object]]:
    """A scheduled cutover's start time and final-sync deadline (nothing for a failover started at once)."""
    out: list[tuple[str, object]] = []
    if job.HasField("start_at"):
        out.append(("start at", field_time(job, "start_at")))
    if job.HasField("final_sync_deadline"):
        action = enum_label(failover_pb2.DeadlineMissedAction, job.on_deadline_missed, "DEADLINE_MISSED_ACTION")
        missed = " — MISSED" if job.deadline_missed else ""
        out.append(("final sync deadline", f"{field_time(job, 'final_sync_deadline')} (if missed: {action}){missed}"))
    return out


def show_failover_job(ctx: Context, job: failover_pb2.FailoverJob) -> None:
    ctx.out.fields(
        [
            ("id", job.id),
            ("kind", f"failover ({failover_kind(job)})"),
            ("status", status_text(failover_status(job))),
            ("vm context", job.vm_context_id),
            ("current step", job.current_step or render.NONE),
            *_timing_fields(job),
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
    elif ctx.out.quiet:
        ctx.out.ids([job.id])
    else:
        ctx.out.line(f"{verb} {job_kind(job)} replication job {job.id} for VM {job.vm_context_id} ({job_status(job)})")


# ---- commands -----------------------------------------------------------------------------------------------------
JOB_STATUSES = sorted(
    {
        *enum_choices(replication_pb2.ReplicationJobStatus, STATUS_PREFIX),
        *enum_choices(failover_pb2.FailoverJobStatus, "FAILOVER_JOB_STATUS"),
    }
)
JOB_KINDS = ["replication", *enum_choices(failover_pb2.FailoverJobKind, "FAILOVER_JOB_KIND")]


def inner(job: job_pb2.Job) -> replication_pb2.ReplicationJob | failover_pb2.FailoverJob:
    return job.replication_job if job.WhichOneof("job") == "replication_job" else job.failover_job


def kind_label(job: job_pb2.Job) -> str:
    return "replication" if job.WhichOneof("job") == "replication_job" else failover_kind(job.failover_job)


def status_label(job: job_pb2.Job) -> str:
    if job.WhichOneof("job") == "replication_job":
        return job_status(job.replication_job)
    return failover_status(job.failover_job)


def _progress(job: job_pb2.Job) -> str:
    if job.WhichOneof("job") == "replication_job":
        r = job.replication_job
        return f"{r.percent:.1f} %  {progress_text(r.bytes_done, r.bytes_total)}"
    f = job.failover_job
    if f.status == failover_pb2.FAILOVER_JOB_STATUS_SCHEDULED:
        return f"starts {field_time(f, 'start_at')}"
    done = sum(1 for s in f.steps if s.status in (failover_pb2.STEP_STATUS_COMPLETED, failover_pb2.STEP_STATUS_SKIPPED))
    return f"step {done}/{len(f.steps)}" + (f" {f.current_step}" if f.current_step else "")


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    vm = resolve.optional(resolve.vm_id, ctx, args.vm)
    request = job_pb2.ListJobsRequest(vm_context_id=vm, open_only=args.open)
    items = list(ctx.client.paged(ctx.client.jobs, "ListJobs", request, lambda r: r.jobs))
    if args.appliance:
        appliance = resolve.appliance_id(ctx, args.appliance)
        mine = {
            v.id
            for v in ctx.client.paged(
                ctx.client.vms,
                "ListVmContexts",
                vm_context_pb2.ListVmContextsRequest(appliance_id=appliance),
                lambda r: r.vm_contexts,
            )
        }
        items = [j for j in items if inner(j).vm_context_id in mine]
    if args.status:
        items = [j for j in items if status_label(j) in args.status]
    if args.kind:
        items = [j for j in items if kind_label(j) in args.kind]
    if ctx.out.as_json:
        ctx.out.messages(inner(j) for j in items)
        return 0
    if ctx.out.quiet:
        ctx.out.ids(inner(j).id for j in items)
        return 0
    ctx.out.table(
        ["ID", "KIND", "VM", "STATUS", "PROGRESS", "CREATED", "FINISHED"],
        (
            [
                inner(j).id,
                kind_label(j),
                inner(j).vm_context_id,
                status_text(status_label(j)),
                _progress(j),
                field_time(inner(j), "created_at"),
                field_time(inner(j), "finished_at"),
            ]
            for j in items
        ),
        title="Jobs",
    )
    return 0


def show_job(ctx: Context, job: job_pb2.Job) -> None:
    if ctx.out.as_json:
        ctx.out.message(inner(job))
    elif job.WhichOneof("job") == "replication_job":
        show_replication_job(ctx, job.replication_job)
    else:
        show_failover_job(ctx, job.failover_job)


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.call(ctx.client.jobs, "GetJob", job_pb2.GetJobRequest(id=args.job_id))
    show_job(ctx, reply.job)
    return 0


FORCE_HELP = (
    "end a replication job whose appliance no longer answers (disconnected, or a cancel unanswered for 60 s) "
    "without its confirmation"
)


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    request = job_pb2.CancelJobRequest(id=args.job_id, force=args.force)
    job = ctx.client.call(ctx.client.jobs, "CancelJob", request).job
    if ctx.out.as_json:
        ctx.out.message(inner(job))
        return 0
    if job.WhichOneof("job") == "replication_job" and args.force:
        ctx.out.line(
            f"Job {job.replication_job.id} is {job_status(job.replication_job)} without its appliance's confirmation; "
            f"what it left behind: 'omactl jobs log {job.replication_job.id}'."
        )
        return 0
    if job.WhichOneof("job") == "replication_job":
        ctx.out.line(
            f"Job {job.replication_job.id} is {job_status(job.replication_job)}; its volumes and exports stay for the "
            "next run."
        )
        return 0
    failover = job.failover_job
    if failover.cancel_requested:
        ctx.out.line(
            f"Job {failover.id} stops when its step {failover.current_step} ends (it cannot be stopped half-way); "
            f"follow it with 'omactl watch {failover.id}'."
        )
    else:
        ctx.out.line(f"Job {failover.id} is {failover_status(failover)}: {failover.outcome or 'no outcome recorded'}")
    return 0


def cmd_log(ctx: Context, args: argparse.Namespace) -> int:
    request = job_pb2.ListJobLogEntriesRequest(job_id=args.job_id)
    entries = list(ctx.client.paged(ctx.client.jobs, "ListJobLogEntries", request, lambda r: r.entries))
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
    vm = resolve.vm_id(ctx, args.vm)
    request = replication_pb2.StartReplicationRequest(vm_context_id=vm, request_id=args.request_id or "")
    if args.kind:
        request.kind = enum_parse(replication_pb2.ReplicationJobKind, KIND_PREFIX, args.kind)  # type: ignore[assignment]
    reply = ctx.client.call(ctx.client.replication, "StartReplication", request)
    if args.watch:
        if not ctx.out.as_json:
            started_line(ctx, "Started", reply.job)
        return follow_job(ctx, reply.job.id)
    started_line(ctx, "Started", reply.job)
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
    group = commands.group("jobs", "jobs of every kind (replication, failover, cleanup, rollback, source power)")
    listing = commands.leaf(group, "list", "list jobs of every kind, newest first", cmd_list)
    listing.add_argument("--vm", metavar="VM", help="only jobs of this VM context (id or name)")
    listing.add_argument("--appliance", metavar="APPLIANCE", help="only jobs of this appliance's VMs (id or name)")
    listing.add_argument("--open", action="store_true", help="only jobs that have not ended")
    listing.add_argument(
        "--status",
        metavar="S",
        nargs="+",
        action="extend",
        choices=JOB_STATUSES,
        help="only jobs in these statuses: %(choices)s",
    )
    listing.add_argument(
        "--kind", metavar="K", nargs="+", action="extend", choices=JOB_KINDS, help="only these kinds: %(choices)s"
    )
    show = commands.leaf(group, "show", "show one job of any kind with its disks or steps", cmd_show)
    show.add_argument("job_id", metavar="JOB_ID")
    cancel = commands.leaf(
        group,
        "cancel",
        "cancel a job of any kind (a failover step that cannot be stopped half-way ends first)",
        cmd_cancel,
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument("--force", action="store_true", help=FORCE_HELP)
    log = commands.leaf(group, "log", "the job's log: every step with status, times and message", cmd_log)
    log.add_argument("job_id", metavar="JOB_ID")

    group = commands.group("replicate", "start, cancel and retry replication of a VM's disks")
    start = commands.leaf(group, "start", "start a replication job for a VM context", cmd_start)
    start.add_argument("vm", metavar="VM", help="VM context id or name")
    start.add_argument(
        "--kind",
        choices=["initial", "incremental"],
        help="full copy or changed blocks only (default: the server chooses)",
    )
    start.add_argument("--request-id", metavar="X", help="idempotency key: the same key returns the same job")
    start.add_argument("--watch", action="store_true", help="follow the job until it ends (exit 1 unless completed)")
    cancel = commands.leaf(group, "cancel", "cancel a job (volumes and exports stay)", cmd_cancel)
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument("--force", action="store_true", help=FORCE_HELP)
    retry = commands.leaf(group, "retry", "start a new job like a failed or cancelled one", cmd_retry)
    retry.add_argument("job_id", metavar="JOB_ID")
    retry.add_argument("--watch", action="store_true", help="follow the new job until it ends")
