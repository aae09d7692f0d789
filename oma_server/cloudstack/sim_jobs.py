"""The simulator's async jobs: a command answers `jobid` at once, the work runs in a task, and queryAsyncJobResult
reports jobstatus 0/1/2 with the job's result or error the way ApiAsyncJobDispatcher records them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from oma_server.cloudstack.sim_api import Params, command
from oma_server.cloudstack.sim_errors import ApiError
from oma_server.cloudstack.sim_state import SimulatorState, new_id, now_iso


@dataclass
class Job:
    command: str
    cmd_class: str
    instance_type: str
    instance_id: str | None
    work: Callable[[], Awaitable[dict[str, Any]]]
    on_error: Callable[[], None] | None = None
    immediate: dict[str, Any] | None = None


def submit(state: SimulatorState, job: Job) -> dict[str, Any]:
    job_id = new_id()
    record = {
        "jobid": job_id,
        "cmd": job.cmd_class,
        "jobstatus": 0,
        "jobprocstatus": 0,
        "jobresultcode": 0,
        "jobinstancetype": job.instance_type,
        "created": now_iso(),
        "accountid": state.account["accountid"],
        "userid": state.account["userid"],
    }
    if job.instance_id:
        record["jobinstanceid"] = job.instance_id
    state.jobs[job_id] = record
    state.changed()
    delay = state.faults.job_delay(job.command, state.job_delay_s)
    task = asyncio.get_running_loop().create_task(run_job(state, job, record, delay))
    state.job_tasks.add(task)
    task.add_done_callback(state.job_tasks.discard)
    return {**(job.immediate or {}), "jobid": job_id}


def _fail(record: dict[str, Any], job: Job, errorcode: int, errortext: str) -> None:
    """A failed job as ApiAsyncJobDispatcher completes it: the result code is the error code, and the result is an
    ExceptionResponse holding only errorcode and errortext (no cserrorcode, no uuidList)."""
    if job.on_error is not None:
        job.on_error()
    record.update(
        jobstatus=2,
        jobresultcode=errorcode,
        jobresulttype="object",
        completed=now_iso(),
        jobresult={"errorcode": errorcode, "errortext": errortext},
    )


async def run_job(state: SimulatorState, job: Job, record: dict[str, Any], delay: float | None) -> None:
    log = logger.bind(sim_command=job.command, sim_job_id=record["jobid"])
    if delay is None:
        log.debug("simulator job hangs (fault)")
        await asyncio.Event().wait()
    elif delay > 0:
        await asyncio.sleep(delay)
    hold = state.faults.held(job.command)
    if hold is not None:
        hold.reached.set()
        await hold.release.wait()
    try:
        fault = state.faults.take_job_failure(job.command)
        if fault is not None:
            raise ApiError(fault.errorcode, fault.errortext, fault.cserrorcode)
        result = await job.work()
    except ApiError as e:
        _fail(record, job, e.errorcode, e.errortext)
        log.debug("simulator job failed: {} {}", e.errorcode, e.errortext)
    except Exception as e:  # a bug in the simulator: report it the way CloudStack reports an unexpected exception
        log.exception("simulator job crashed")
        _fail(record, job, 530, str(e))
    else:
        record.update(jobstatus=1, jobresultcode=0, jobresulttype="object", completed=now_iso(), jobresult=result)
        log.debug("simulator job succeeded")
    state.changed()


@command("queryAsyncJobResult")
def _query_job(state: SimulatorState, p: Params) -> dict[str, Any]:
    job = p.entity("jobid", state.jobs)
    return dict(job)
