"""omactl's command line: global flags, the command tree, and main() with its exit codes.

Exit codes: 0 success, 1 a failed call or a job that ended failed/cancelled (one line on stderr), 2 a usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from oma_server.omactl.client import Client, CliError, describe_rpc_error, one_line
from oma_server.omactl.render import Output
from oma_server.version import __version__

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0


@dataclass
class Context:
    client: Client
    out: Output


Handler = Callable[[Context, argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{one_line(message)} (see '{self.prog} --help')", exit_code=2)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: give seconds, for example 30") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: must be more than 0 seconds")
    return value


def _global_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The global flags; leaf commands accept them too (without defaults, so they only override when given)."""
    suppress: Any = argparse.SUPPRESS
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=(os.environ.get("OMA_SERVER") or DEFAULT_SERVER) if defaults else suppress,
        help=f"OMA to talk to (default: $OMA_SERVER or {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if defaults else suppress,
        help="machine output: protobuf JSON (proto field names); JSON lines for watch",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=DEFAULT_TIMEOUT_S if defaults else suppress,
        help=f"deadline of each call in seconds (default {DEFAULT_TIMEOUT_S:g}; watch streams have none)",
    )


class Commands:
    """Helper the command modules use to add their groups and leaves."""

    def __init__(self, root: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        self.root = root
        self.common = Parser(add_help=False)
        _global_flags(self.common, defaults=False)

    def group(self, name: str, help: str) -> argparse._SubParsersAction:  # type: ignore[type-arg]
        parser = self.root.add_parser(name, help=help, description=help)
        sub = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)
        return sub

    def leaf(
        self,
        parent: argparse._SubParsersAction,  # type: ignore[type-arg]
        name: str,
        help: str,
        handler: Handler,
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help, parents=[self.common])
        parser.set_defaults(handler=handler)
        return parser


def build_parser() -> Parser:
    from oma_server.omactl import appliances, failover, jobs, storage, vms, watch

    parser = Parser(
        prog="omactl",
        description="Operator CLI of the OMA control plane (oma.v1 API).",
        epilog="Errors print one line on stderr and exit 1; usage errors exit 2.",
    )
    _global_flags(parser, defaults=True)
    parser.add_argument("--version", action="version", version=f"omactl {__version__}")
    root = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = Commands(root)
    appliances.register(commands)
    vms.register(commands)
    jobs.register(commands)
    watch.register(commands)
    storage.register(commands)
    failover.register(commands)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = Client(args.server, args.timeout)
    try:
        ctx = Context(client=client, out=Output(as_json=args.json))
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
