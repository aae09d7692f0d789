"""ReplicationService and JobService servicers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from oma.v1 import job_pb2, job_pb2_grpc, replication_pb2, replication_pb2_grpc
from oma_server.api.convert import (
    enum_name,
    job_log_entry_to_proto,
    job_to_proto,
    job_update_to_proto,
    replication_job_to_proto,
)
from oma_server.job_watch import JobWatcher
from oma_server.joblog import JobLogService
from oma_server.jobs import Jobs
from oma_server.replication.service import ReplicationService
from oma_server.replication.store import ReplicationJobStore
from oma_server.vm_contexts.service import VmContextService


class ReplicationServicer(replication_pb2_grpc.ReplicationServiceServicer):
    def __init__(
        self, replication: ReplicationService, jobs: ReplicationJobStore, all_jobs: Jobs, vms: VmContextService
    ) -> None:
        self.replication = replication
        self.jobs = jobs
        self.all_jobs = all_jobs
        self.vms = vms

    async def StartReplication(
        self, request: replication_pb2.StartReplicationRequest, context: grpc.aio.ServicerContext
    ) -> replication_pb2.StartReplicationResponse:
        kind = enum_name(replication_pb2.ReplicationJobKind, "REPLICATION_JOB_KIND", request.kind)
        job = await self.replication.start(request.vm_context_id, kind, request.request_id)
        return replication_pb2.StartReplicationResponse(job=replication_job_to_proto(job))

    async def GetReplicationJob(
        self, request: replication_pb2.GetReplicationJobRequest, context: grpc.aio.ServicerContext
    ) -> replication_pb2.GetReplicationJobResponse:
        return replication_pb2.GetReplicationJobResponse(
            job=replication_job_to_proto(await self.all_jobs.replication_job(request.id))
        )

    async def ListReplicationJobs(
        self, request: replication_pb2.ListReplicationJobsRequest, context: grpc.aio.ServicerContext
    ) -> replication_pb2.ListReplicationJobsResponse:
        statuses = [
            enum_name(replication_pb2.ReplicationJobStatus, "REPLICATION_JOB_STATUS", s) for s in request.statuses
        ]
        await self.vms.require(request.vm_context_id)
        page = await self.jobs.list_jobs(
            request.page_size,
            request.page_token,
            vm_context_id=request.vm_context_id,
            appliance_id=request.appliance_id,
            statuses=[s for s in statuses if s],
        )
        return replication_pb2.ListReplicationJobsResponse(
            jobs=[replication_job_to_proto(j) for j in page.jobs], next_page_token=page.next_page_token
        )

    async def CancelReplicationJob(
        self, request: replication_pb2.CancelReplicationJobRequest, context: grpc.aio.ServicerContext
    ) -> replication_pb2.CancelReplicationJobResponse:
        job = await self.replication.cancel(request.id, request.force)
        return replication_pb2.CancelReplicationJobResponse(job=replication_job_to_proto(job))

    async def RetryReplicationJob(
        self, request: replication_pb2.RetryReplicationJobRequest, context: grpc.aio.ServicerContext
    ) -> replication_pb2.RetryReplicationJobResponse:
        job = await self.replication.retry(request.id)
        return replication_pb2.RetryReplicationJobResponse(job=replication_job_to_proto(job))


class JobServicer(job_pb2_grpc.JobServiceServicer):
    def __init__(self, all_jobs: Jobs, job_watch: JobWatcher, joblog: JobLogService, vms: VmContextService) -> None:
        self.all_jobs = all_jobs
        self.job_watch = job_watch
        self.joblog = joblog
        self.vms = vms

    async def GetJob(self, request: job_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> job_pb2.GetJobResponse:
        return job_pb2.GetJobResponse(job=job_to_proto(await self.all_jobs.get(request.id)))

    async def ListJobs(
        self, request: job_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> job_pb2.ListJobsResponse:
        page = await self.all_jobs.list_jobs(
            request.page_size, request.page_token, request.vm_context_id, request.open_only
        )
        return job_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in page.jobs], next_page_token=page.next_page_token)

    async def CancelJob(
        self, request: job_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> job_pb2.CancelJobResponse:
        return job_pb2.CancelJobResponse(job=job_to_proto(await self.all_jobs.cancel(request.id, request.force)))

    async def WatchJob(
        self, request: job_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[job_pb2.WatchJobResponse]:
        updates = self.job_watch.watch_job(request.job_id, request.from_revision, request.keep_following)
        async for update in updates:
            yield job_pb2.WatchJobResponse(update=job_update_to_proto(update))

    async def WatchJobs(
        self, request: job_pb2.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[job_pb2.WatchJobsResponse]:
        await self.vms.require(request.vm_context_id)
        updates = self.job_watch.watch_jobs(request.vm_context_id, request.from_revision, request.include_finished)
        async for update in updates:
            yield job_pb2.WatchJobsResponse(update=job_update_to_proto(update))

    async def ListJobLogEntries(
        self, request: job_pb2.ListJobLogEntriesRequest, context: grpc.aio.ServicerContext
    ) -> job_pb2.ListJobLogEntriesResponse:
        page = await self.joblog.list(request.job_id, request.page_size, request.page_token)
        return job_pb2.ListJobLogEntriesResponse(
            entries=[job_log_entry_to_proto(e) for e in page.entries], next_page_token=page.next_page_token
        )
