"""The agent's local gRPC API (vma.v1.VmaAgentService) with health and reflection, so grpcurl can inspect it."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vma.v1 import agent_service_pb2, agent_service_pb2_grpc
from vma_client_stubs.agent.agent import Agent
from vma_client_stubs.agent.vcenter import VmNotFound

SERVICE_NAME = agent_service_pb2.DESCRIPTOR.services_by_name["VmaAgentService"].full_name


class VmaAgentServicer(agent_service_pb2_grpc.VmaAgentServiceServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def ListVirtualMachines(
        self, request: agent_service_pb2.ListVirtualMachinesRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.ListVirtualMachinesResponse:
        vcenter = self.agent.vcenter

        def load() -> agent_service_pb2.ListVirtualMachinesResponse:
            return agent_service_pb2.ListVirtualMachinesResponse(
                virtual_machines=[vcenter.to_proto(vm) for vm in vcenter.list_vms(request.name_filter)]
            )

        return await asyncio.to_thread(load)

    async def GetVirtualMachine(
        self, request: agent_service_pb2.GetVirtualMachineRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.GetVirtualMachineResponse:
        vcenter = self.agent.vcenter
        try:
            vm = await asyncio.to_thread(lambda: vcenter.to_proto(vcenter.get_vm(request.uuid)))
        except VmNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return agent_service_pb2.GetVirtualMachineResponse(virtual_machine=vm)

    async def GetCbtStatus(
        self, request: agent_service_pb2.GetCbtStatusRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.GetCbtStatusResponse:
        try:
            disks = await asyncio.to_thread(self.agent.vcenter.cbt_status, request.vm_uuid)
        except VmNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return agent_service_pb2.GetCbtStatusResponse(disks=disks)

    async def ListLocalJobs(
        self, request: agent_service_pb2.ListLocalJobsRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.ListLocalJobsResponse:
        return agent_service_pb2.ListLocalJobsResponse(jobs=self.agent.local_jobs())

    async def GetAgentStatus(
        self, request: agent_service_pb2.GetAgentStatusRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.GetAgentStatusResponse:
        agent = self.agent
        client = agent.client
        reply = agent_service_pb2.GetAgentStatusResponse(
            appliance_id=agent.appliance_id,
            oma_address=agent.oma.target,
            connected=client.connected,
            session_id=client.session_id,
            unacked_messages=client.unacked_count(),
            agent_version=agent.version,
        )
        if client.connected and agent.connected_since is not None:
            ts = timestamp_pb2.Timestamp()
            ts.FromNanoseconds(int(agent.connected_since * 1e9))
            reply.connected_since.CopyFrom(ts)
        return reply


class AgentService:
    """The gRPC server of the local API. `await start()` binds `listen` (port 0 picks one: see `port`)."""

    def __init__(self, agent: Agent, listen: str = "127.0.0.1:0") -> None:
        self.agent = agent
        self.listen = listen
        self.server = grpc.aio.server()
        agent_service_pb2_grpc.add_VmaAgentServiceServicer_to_server(VmaAgentServicer(agent), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME], self.server)
        self.port = 0

    async def start(self) -> int:
        self.port = self.server.add_insecure_port(self.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.listen}")
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
