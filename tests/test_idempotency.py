"""Safe retries (issue #19, AIP-155): every mutating RPC takes a request_id; a retry after a lost answer gets the
first answer and changes nothing, also after a restart; the same id with another request is INVALID_ARGUMENT.

"A lost answer" is simulated the way a client sees it: the call is made, its answer thrown away, and the same
request is sent again; the effect is then counted through the public List RPCs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from oma.v1 import (
    access_pb2,
    access_pb2_grpc,
    appliance_pb2,
    appliance_pb2_grpc,
)
from oma_server.app import App
from oma_server.server import SERVICE_NAMES, OmaServer
from tests.clients import oma_channel
from tests.conftest import make_settings
from vma_client_stubs.errors import error_info_of


async def retried(call: Callable[[Any], Awaitable[Message]], request: Message) -> Message:
    """Send `request`, lose its answer, send it again: the answer of the retry."""
    first = await call(request)
    again = await call(request)
    assert again == first, "a retry with the same request_id must get the first answer"
    return again


async def refused_reuse(call: Callable[[Any], Awaitable[Message]], request: Message) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    info = error_info_of(err.value)
    assert info is not None and info.reason == "REQUEST_ID_REUSED" and info.metadata["field"] == "request_id"


async def test_enroll_retried_after_a_lost_answer_and_after_a_restart_enrolls_once(
    tmp_path: Path, database_url: str
) -> None:
    server = OmaServer(App(make_settings(tmp_path, database_url)))
    await server.start()
    request = appliance_pb2.EnrollApplianceRequest(name="vma-once", request_id="enroll-1")
    try:
        async with oma_channel(server) as channel:
            stub = appliance_pb2_grpc.ApplianceServiceStub(channel)
            first = await retried(stub.EnrollAppliance, request)
            assert first.credential
            await refused_reuse(
                stub.EnrollAppliance, appliance_pb2.EnrollApplianceRequest(name="vma-other", request_id="enroll-1")
            )
        settings = server.app.settings
        await server.stop(grace=0.2)
        settings.listen = "127.0.0.1:0"
        server = OmaServer(App(settings))
        await server.start()
        async with oma_channel(server) as channel:
            stub = appliance_pb2_grpc.ApplianceServiceStub(channel)
            assert await stub.EnrollAppliance(request) == first  # the same credential: the first answer, kept
            listed = await stub.ListAppliances(appliance_pb2.ListAppliancesRequest())
            assert [a.name for a in listed.appliances] == ["vma-once"]
    finally:
        await server.stop(grace=0.2)
