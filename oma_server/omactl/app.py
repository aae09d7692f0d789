"""omactl's command line: global flags, the command tree, and main() with its exit codes.

Exit codes: 0 success, 1 a failed call or a job that ended failed/cancelled (one line on stderr), 2 a usage error,
130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import grpc

from oma_server.omactl import (
    appliances,
    cloud,
    failover,
    groups,
    jobs,
    limits,
    schedules,
    server,
    storage,
    tokens,
    vms,
    watch,
)
from oma_server.omactl.client import Client, CliError, describe_rpc_error, one_line
from oma_server.omactl.context import DEFAULT_SERVER, Commands, Context, Handler, Parser, endpoint_of, global_flags
from oma_server.omactl.render import Output
from oma_server.version import __version__


def build_parser() -> Parser:
    parser = Parser(
        prog="omactl",
        description="Operator CLI of the OMA control plane (oma.v1 API).",
        epilog="Errors print one line on stderr and exit 1; usage errors exit 2.",
    )
    global_flags(parser, defaults=True)
    parser.add_argument("--version", action="version", version=f"omactl {__version__}")
    root = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = Commands(root)
    appliances.register(commands)
    vms.register(commands)
    jobs.register(commands)
    watch.register(commands)
    storage.register(commands)
    failover.register(commands)
    cloud.register(commands)
    server.register(commands)
    tokens.register(commands)
    schedules.register(commands)
    groups.register(commands)
    limits.register(commands)
    return parser


def run(argv: Sequence[str] | None = None, channel: grpc.Channel | None = None) -> int:
    """One command; raises CliError. `channel` replaces the connection to `--server` (tests)."""
    args = build_parser().parse_args(argv)
    client = Client(endpoint_of(args), args.timeout, channel)
    try:
        ctx = Context(client=client, out=Output(as_json=args.json, wide=args.wide, quiet=args.quiet))
        handler: Handler = args.handler
        return handler(ctx, args)
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except CliError as error:
        _fail(error.text)
        return error.exit_code
    except grpc.RpcError as error:  # a call not routed through Client.call; still one line
        _fail(describe_rpc_error(error, os.environ.get("OMA_SERVER") or DEFAULT_SERVER))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except Exception as error:
        _fail(f"internal error: {type(error).__name__}: {one_line(str(error))}")
        return 1


def _fail(text: str) -> None:
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _quiet_stdout()
    print(f"omactl: {text}", file=sys.stderr, flush=True)


def _quiet_stdout() -> None:
    """After a closed pipe (omactl ... | head), stop Python from complaining while it exits."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
