"""omactl info: which OMA answers, and whether it serves yet (--wait: until it does)."""

from __future__ import annotations

import argparse
import time

from grpc_health.v1 import health_pb2, health_pb2_grpc

from oma.v1 import server_info_pb2, server_info_pb2_grpc
from oma_server.omactl.client import CliError
from oma_server.omactl.context import Commands, Context
from oma_server.omactl.render import field_time


def _serving(ctx: Context) -> bool:
    stub = health_pb2_grpc.HealthStub(ctx.client.channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0, wait_for_ready=True)
    except Exception:  # not reachable yet, or not serving yet: both are "not yet"
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def cmd_info(ctx: Context, args: argparse.Namespace) -> int:
    if args.wait:
        deadline = time.monotonic() + args.wait
        while not _serving(ctx):
            if time.monotonic() > deadline:
                raise CliError(f"UNAVAILABLE: the OMA at {ctx.client.server} did not serve within {args.wait:g} s")
            time.sleep(0.2)  # a poll interval while the server starts, not a synchronisation
    stub = server_info_pb2_grpc.ServerInfoServiceStub(ctx.client.channel)
    info = ctx.client.call(stub, "GetServerInfo", server_info_pb2.GetServerInfoRequest())
    if ctx.out.as_json:
        ctx.out.message(info)
        return 0
    ctx.out.fields(
        [
            ("server", ctx.client.server),
            ("version", info.version),
            ("database", info.database_kind),
            ("cloudstack", info.cloudstack_kind),
            ("schema", info.schema_version),
            ("process", info.process_id),
            ("started", field_time(info, "started_at")),
        ]
    )
    return 0


def register(commands: Commands) -> None:
    info = commands.leaf(commands.root, "info", "which OMA answers: version, database, CloudStack", cmd_info)
    info.add_argument(
        "--wait", metavar="SECONDS", type=float, default=0.0, help="wait up to SECONDS until the OMA serves"
    )
