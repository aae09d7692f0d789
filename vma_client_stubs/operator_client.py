"""A thin async client of the OMA operator API: what the agent, omactl helpers and tests need, nothing more.

For anything else use the generated stubs directly (`OperatorClient.channel` is a plain grpc.aio channel).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from oma.v1 import (
    appliance_pb2,
    appliance_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    replication_pb2,
    replication_pb2_grpc,
)


@dataclass(frozen=True)
class Enrollment:
    """An enrolled appliance and its one-time credential (what a VMA needs to connect)."""

    appliance_id: str
    credential: str
    appliance: appliance_pb2.Appliance


class OperatorClient:
    """Async wrapper of ApplianceService, ReplicationService and JobService. Use as `async with`."""

    def __init__(
        self,
        target: str,
        *,
        channel_credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        if channel_credentials is not None:
            self.channel = grpc.aio.secure_channel(target, channel_credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        self.appliances = appliance_pb2_grpc.ApplianceServiceStub(self.channel)
        self.replication = replication_pb2_grpc.ReplicationServiceStub(self.channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> OperatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- appliances -------------------------------------------------------------------------------------------

    async def enroll_appliance(self, name: str) -> Enrollment:
        """Enrolls an appliance; the credential is returned only here."""
        response = await self.appliances.EnrollAppliance(
            appliance_pb2.EnrollApplianceRequest(name=name), timeout=self.timeout_s
        )
        return Enrollment(response.appliance.id, response.credential, response.appliance)

    async def get_appliance(self, appliance_id: str) -> appliance_pb2.Appliance:
        response = await self.appliances.GetAppliance(
            appliance_pb2.GetApplianceRequest(id=appliance_id), timeout=self.timeout_s
        )
        return response.appliance

    async def revoke_appliance(self, appliance_id: str) -> appliance_pb2.Appliance:
        response = await self.appliances.RevokeAppliance(
            appliance_pb2.RevokeApplianceRequest(id=appliance_id), timeout=self.timeout_s
        )
        return response.appliance

    # -- jobs -------------------------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> replication_pb2.ReplicationJob:
        """One replication job."""
        response = await self.replication.GetReplicationJob(
            replication_pb2.GetReplicationJobRequest(id=job_id), timeout=self.timeout_s
        )
        return response.job

    async def watch_job(self, job_id: str, from_revision: int = 0) -> AsyncIterator[job_pb2.JobUpdate]:
        """Updates of one job: its current state first, then every change (resume with `from_revision`)."""
        call = self.jobs.WatchJob(job_pb2.WatchJobRequest(job_id=job_id, from_revision=from_revision))
        try:
            async for response in call:
                yield response.update
        finally:
            call.cancel()
