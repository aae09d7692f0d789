"""omactl watch: live progress of one job (until it ends) or of every job, resumable across dropped streams.

On a terminal: rich bars, one per job and one per disk (bytes done/total, throughput, ETA, phase, operation).
Otherwise (or with --json): one line per update (JSON lines with --json).

A dropped stream is reopened with from_revision = the last revision seen, so no change is missed; OUT_OF_RANGE
(the server no longer holds that revision) starts over from 0, which sends the current state first.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

import grpc
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Column

from oma.v1 import failover_pb2, job_pb2, replication_pb2, schedule_pb2
from oma_server.omactl import render, resolve
from oma_server.omactl.client import CliError, describe_rpc_error
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.labels import error_text, failover_kind, failover_status, job_kind, job_status, phase
from oma_server.omactl.render import Output, rate, size, to_dict
from oma_server.omactl.schedules import next_sync, rpo_line, rpo_short
from vma_client_stubs.errors import error_info_of

RECONNECT_FOR_S = 300.0
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 5.0

_REPLICATION_FINAL = {
    replication_pb2.REPLICATION_JOB_STATUS_COMPLETED: 0,
    replication_pb2.REPLICATION_JOB_STATUS_FAILED: 1,
    replication_pb2.REPLICATION_JOB_STATUS_CANCELLED: 1,
}
_FAILOVER_FINAL = {
    failover_pb2.FAILOVER_JOB_STATUS_COMPLETED: 0,
    failover_pb2.FAILOVER_JOB_STATUS_FAILED: 1,
    failover_pb2.FAILOVER_JOB_STATUS_CANCELLED: 1,
}
_STEP_DONE = {failover_pb2.STEP_STATUS_COMPLETED, failover_pb2.STEP_STATUS_SKIPPED}

Job = replication_pb2.ReplicationJob | failover_pb2.FailoverJob


def job_of(update: job_pb2.JobUpdate) -> Job | None:
    which = update.WhichOneof("job")
    if which == "replication_job":
        return update.replication_job
    if which == "failover_job":
        return update.failover_job
    return None


def exit_code_of(job: Job) -> int | None:
    """0 completed, 1 failed or cancelled, None while the job still runs."""
    if isinstance(job, replication_pb2.ReplicationJob):
        return _REPLICATION_FINAL.get(job.status)
    return _FAILOVER_FINAL.get(job.status)


def final_message(job: Job) -> str:
    """What to say when a job ended: a summary for success, the error for failure."""
    if isinstance(job, replication_pb2.ReplicationJob):
        status = job_status(job)
        if job.status == replication_pb2.REPLICATION_JOB_STATUS_COMPLETED:
            began = job.started_at if job.HasField("started_at") else job.created_at
            took = render.elapsed(began, job.finished_at)
            return f"job {job.id} completed: {size(job.bytes_done)} copied" + (f" in {took}" if took != "-" else "")
        if job.status == replication_pb2.REPLICATION_JOB_STATUS_CANCELLED:
            return f"job {job.id} was cancelled" + (f": {error_text(job.error)}" if job.error.message else "")
        return f"job {job.id} {status}: {error_text(job.error)}"
    if job.status == failover_pb2.FAILOVER_JOB_STATUS_COMPLETED:
        target = f"; target VM {job.target_vm_name} ({job.target_vm_id})" if job.target_vm_id else ""
        outcome = f": {job.outcome}" if job.outcome else ""
        return f"{failover_kind(job)} job {job.id} completed{target}{outcome}"
    if job.status == failover_pb2.FAILOVER_JOB_STATUS_CANCELLED:
        return f"{failover_kind(job)} job {job.id} was {job.outcome or 'cancelled'}"
    failed_step = next((s for s in job.steps if s.status == failover_pb2.STEP_STATUS_FAILED), None)
    where = f" at step {failed_step.name}" if failed_step else ""
    detail = (
        error_text(job.error) if (job.error.message or job.error.reason) else (failed_step.error if failed_step else "")
    )
    return f"{failover_kind(job)} job {job.id} failed{where}: {detail or 'no detail'}"


# ---- renderers ----------------------------------------------------------------------------------------------------
class Renderer(Protocol):
    def __enter__(self) -> Renderer: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def show(self, update: job_pb2.JobUpdate) -> None: ...


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def replication_line(job: replication_pb2.ReplicationJob) -> str:
    parts = [
        f"job {job.id}",
        job_kind(job),
        job_status(job),
        f"{job.percent:.1f}%",
        f"{size(job.bytes_done)}/{size(job.bytes_total)}",
        rate(job.throughput_bytes_per_second),
        f"eta {render.field_duration(job, 'eta')}",
        f"phase {phase(job.phase)}",
    ]
    line = " ".join(parts)
    if job.current_operation:
        line += f" - {job.current_operation}"
    for d in job.disks:
        pct = 100.0 * d.bytes_done / d.bytes_total if d.bytes_total else (100.0 if d.completed else 0.0)
        state = "done" if d.completed else phase(d.phase)
        line += f" | disk {d.disk_key} {pct:.1f}% {size(d.bytes_done)}/{size(d.bytes_total)} {state}"
    return line


def failover_line(job: failover_pb2.FailoverJob) -> str:
    done = sum(1 for s in job.steps if s.status in _STEP_DONE)
    line = f"job {job.id} {failover_kind(job)} {failover_status(job)} step {done}/{len(job.steps)}"
    if job.current_step:
        line += f" - {job.current_step}"
    if job.cancel_requested:
        line += " (cancel requested: stops when the step ends)"
    return line


class LineRenderer:
    """One line per change of what a job shows (a time stamp, then the job), or protobuf JSON lines.

    A job's snapshot and the change it repeats, or a change of something a line does not show (a failover step's
    internal bookkeeping), print nothing new: every line says something the previous one of that job did not."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self._last: dict[str, str] = {}

    def __enter__(self) -> LineRenderer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def show(self, update: job_pb2.JobUpdate) -> None:
        job = job_of(update)
        if self.out.as_json:
            if update.WhichOneof("job") is not None or update.kind == job_pb2.UPDATE_KIND_SYNCED:
                self.out.json_line(to_dict(update))
            return
        if isinstance(job, replication_pb2.ReplicationJob):
            key, body = job.id, replication_line(job)
        elif isinstance(job, failover_pb2.FailoverJob):
            key, body = job.id, failover_line(job)
        elif update.WhichOneof("job") == "vm_rpo":
            key, body = f"rpo:{update.vm_rpo.vm_context_id}", rpo_line(update.vm_rpo)
        else:
            return
        if self._last.get(key) != body:
            self._last[key] = body
            self.out.line(f"{_now()} {body}")


class BarRenderer:
    """rich bars: one per job, one per disk of a replication job."""

    def __init__(self, out: Output) -> None:
        def fixed(width: int) -> Column:
            return Column(min_width=width, no_wrap=True)

        self.out = out
        self.progress = Progress(
            TextColumn("{task.description}", table_column=fixed(20)),
            TextColumn("{task.fields[state]}", style="cyan", table_column=fixed(11)),
            BarColumn(bar_width=20, table_column=fixed(20)),
            TaskProgressColumn(table_column=fixed(5)),
            TextColumn("{task.fields[amount]}", table_column=fixed(19)),
            TextColumn("{task.fields[rate]}", table_column=fixed(11)),
            TextColumn("eta {task.fields[eta]}", table_column=fixed(8)),
            TextColumn("{task.fields[operation]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
            console=out.console,
            refresh_per_second=8,
            expand=True,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> BarRenderer:
        self.progress.start()
        self.out.live_console = self.progress.console  # notes go above the bars instead of through them
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.out.live_console = None
        self.progress.stop()

    def _task(self, key: str, **fields: Any) -> None:
        if key in self.tasks:
            self.progress.update(self.tasks[key], **fields)
        else:
            self.tasks[key] = self.progress.add_task(**fields)

    def show(self, update: job_pb2.JobUpdate) -> None:
        job = job_of(update)
        if isinstance(job, replication_pb2.ReplicationJob):
            self._replication(job)
        elif isinstance(job, failover_pb2.FailoverJob):
            self._failover(job)
        elif update.WhichOneof("job") == "vm_rpo":
            self._rpo(update.vm_rpo)

    def _rpo(self, rpo: schedule_pb2.VmRpo) -> None:
        """One line per scheduled VM: its RPO against the target and its next sync."""
        self._task(
            f"rpo:{rpo.vm_context_id}",
            description=f"[bold]vm {rpo.vm_context_id[:8]}[/] rpo",
            total=None,
            completed=0,
            state=rpo_short(rpo).split(" ")[0],
            amount=rpo_short(rpo).partition(" ")[2],
            rate="",
            eta=render.NONE,
            phase="",
            operation=f"next sync {next_sync(rpo)}" if rpo.schedule_id else rpo.reason,
        )

    def _replication(self, job: replication_pb2.ReplicationJob) -> None:
        self._task(
            job.id,
            description=f"[bold]job {job.id[:8]}[/] {job_kind(job)}",
            total=100.0,
            completed=job.percent,
            state=job_status(job),
            amount=f"{size(job.bytes_done)}/{size(job.bytes_total)}",
            rate=rate(job.throughput_bytes_per_second),
            eta=render.field_duration(job, "eta"),
            phase=phase(job.phase),
            operation=" ".join(part for part in (phase(job.phase) + ":", job.current_operation) if part),
        )
        for d in job.disks:
            total = d.bytes_total or None
            self._task(
                f"{job.id}/{d.disk_id}",
                description=f"  disk {d.disk_key}",
                total=total,
                completed=(d.bytes_total if d.completed else d.bytes_done) if total else 0,
                state="done" if d.completed else phase(d.phase),
                amount=f"{size(d.bytes_done)}/{size(d.bytes_total)}",
                rate=rate(d.throughput_bytes_per_second),
                eta=_disk_eta(d),
                phase=phase(d.phase),
                operation=d.full_copy_reason,
            )

    def _failover(self, job: failover_pb2.FailoverJob) -> None:
        done = sum(1 for s in job.steps if s.status in _STEP_DONE)
        self._task(
            job.id,
            description=f"[bold]job {job.id[:8]}[/] {failover_kind(job)}",
            total=len(job.steps) or None,
            completed=done,
            state=failover_status(job),
            amount=f"step {done}/{len(job.steps)}",
            rate="",
            eta=render.NONE,
            phase=job.current_step,
            operation=" ".join(part for part in (job.current_step, job.target_vm_name) if part),
        )


def _disk_eta(disk: replication_pb2.DiskReplicationProgress) -> str:
    if disk.completed or not disk.throughput_bytes_per_second or disk.bytes_total <= disk.bytes_done:
        return render.NONE
    return render.seconds_text((disk.bytes_total - disk.bytes_done) / disk.throughput_bytes_per_second)


def renderer_for(out: Output) -> Renderer:
    if out.as_json or not out.is_tty:
        return LineRenderer(out)
    return BarRenderer(out)


# ---- the resumable stream -----------------------------------------------------------------------------------------
def _is_drop(error: grpc.RpcError) -> bool:
    """A broken stream (server restart, network) rather than an answer about the request."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    if error_info_of(error) is not None:
        return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)
    return code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    )


def follow(
    ctx: Context,
    method: str,
    open_stream: Callable[[int], Any],
    handle: Callable[[job_pb2.JobUpdate], int | None],
) -> int:
    """Read updates until `handle` returns an exit code; reopen dropped streams from the last revision."""
    revision = 0
    received = False
    lost_since: float | None = None
    delay = _BACKOFF_FIRST_S
    while True:
        call = open_stream(revision)
        reason = "the server ended the stream"
        try:
            responses: Iterator[Any] = call
            for response in responses:
                update: job_pb2.JobUpdate = response.update
                received, lost_since, delay = True, None, _BACKOFF_FIRST_S
                revision = max(revision, update.revision)
                result = handle(update)
                if result is not None:
                    call.cancel()
                    return result
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.OUT_OF_RANGE:
                ctx.out.note(f"omactl: revision {revision} is no longer held by the server; starting over")
                revision = 0
                continue
            if not received or not _is_drop(error):
                raise CliError(describe_rpc_error(error, ctx.client.server, method)) from None
            reason = describe_rpc_error(error, ctx.client.server, method)
        now = time.monotonic()
        if lost_since is None:
            lost_since = now
            ctx.out.note(f"omactl: stream lost ({reason}); reconnecting from revision {revision}")
        elif now - lost_since > RECONNECT_FOR_S:
            raise CliError(f"{reason}; gave up reconnecting after {RECONNECT_FOR_S:g} s")
        time.sleep(delay)
        delay = min(delay * 2, _BACKOFF_MAX_S)


def follow_job(ctx: Context, job_id: str) -> int:
    """Watch one job until it reaches a final status: 0 completed, 1 failed or cancelled (error on stderr)."""
    final: list[Job] = []

    def handle(update: job_pb2.JobUpdate) -> int | None:
        renderer.show(update)
        job = job_of(update)
        if job is None:
            return None
        code = exit_code_of(job)
        if code is not None:
            final.append(job)
        return code

    def open_stream(revision: int) -> Any:
        return ctx.client.jobs.WatchJob(job_pb2.WatchJobRequest(job_id=job_id, from_revision=revision))

    with renderer_for(ctx.out) as renderer:
        code = follow(ctx, "oma.v1.JobService/WatchJob", open_stream, handle)
    if final:
        if code == 0:
            if not ctx.out.as_json:
                ctx.out.line(final_message(final[0]))
        else:
            raise CliError(final_message(final[0]))
    return code


def follow_jobs(ctx: Context, vm_context_id: str, include_finished: bool) -> int:
    """Watch every job (of one VM) until interrupted."""

    def handle(update: job_pb2.JobUpdate) -> int | None:
        renderer.show(update)
        return None

    def open_stream(revision: int) -> Any:
        request = job_pb2.WatchJobsRequest(
            vm_context_id=vm_context_id, from_revision=revision, include_finished=include_finished
        )
        return ctx.client.jobs.WatchJobs(request)

    try:
        with renderer_for(ctx.out) as renderer:
            return follow(ctx, "oma.v1.JobService/WatchJobs", open_stream, handle)
    except KeyboardInterrupt:
        return 0


def cmd_watch(ctx: Context, args: argparse.Namespace) -> int:
    if args.job_id and args.vm:
        raise CliError("give either JOB_ID or --vm, not both (see 'omactl watch --help')", exit_code=2)
    if args.job_id:
        return follow_job(ctx, args.job_id)
    return follow_jobs(ctx, resolve.optional(resolve.vm_id, ctx, args.vm), args.all)


def register(commands: Commands) -> None:
    watch = commands.leaf(
        commands.root,
        "watch",
        "live progress of one job (exits when it ends: 0 completed, 1 failed/cancelled) or of every job",
        cmd_watch,
    )
    watch.add_argument("job_id", metavar="JOB_ID", nargs="?", help="job to follow; omit to follow every job")
    watch.add_argument("--vm", metavar="VM", help="follow every job of this VM context (id or name)")
    watch.add_argument("--all", action="store_true", help="with no JOB_ID: also show jobs that already finished")
