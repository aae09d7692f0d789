"""What every omactl command module uses: the context a handler runs with, and the helper that adds commands.

Kept apart from `app` (the parser and main), which imports every command module: the command modules import this,
never `app`, so the package has no import circle.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from oma_server.omactl.client import Client, CliError, one_line
from oma_server.omactl.config import OmactlConfig
from oma_server.omactl.config import find as find_config
from oma_server.omactl.render import Output
from vma_client_stubs.connection import ConnectionSettingsError, Endpoint

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0
#: the CA of an oma-server run with its default data dir, here: omactl on the OMA host needs no --ca
DEFAULT_CA = Path(".oma/tls/ca.crt")


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


def global_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The global flags; leaf commands accept them too (without defaults, so they only override when given)."""
    suppress: Any = argparse.SUPPRESS
    _connection_flags(parser, defaults)
    switches = {
        ("--json",): "machine output: protobuf JSON (proto field names); JSON lines for watch",
        ("--wide",): "tables at full width: shorten no column to fit the terminal (ids are never shortened anyway)",
        ("-q", "--quiet"): "print only the ids of what is listed or created, one per line (for $(omactl -q ...))",
    }
    for names, text in switches.items():
        parser.add_argument(*names, action="store_true", default=False if defaults else suppress, help=text)
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=DEFAULT_TIMEOUT_S if defaults else suppress,
        help=f"deadline of each call in seconds (default {DEFAULT_TIMEOUT_S:g}; watch streams have none)",
    )


def _connection_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Where the OMA is and how to reach it: each flag defaults to its variable (or to nothing, so that the config
    file and the built-in default apply in effective_settings)."""
    suppress: Any = argparse.SUPPRESS

    def from_env(variable: str) -> Any:
        return (os.environ.get(variable) or None) if defaults else suppress

    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=from_env("OMA_SERVER"),
        help=f"OMA to talk to (default: $OMA_SERVER, else the config file's, else {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=from_env("OMA_CONFIG"),
        help="omactl config file with server, ca, token or token_file, insecure (default: $OMA_CONFIG, else "
        "$XDG_CONFIG_HOME/omactl/config.toml when it exists); flags and variables override it",
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        default=from_env("OMA_CA"),
        help="CA certificate to verify the OMA's TLS certificate against (default: $OMA_CA, else the config "
        f"file's, else the OMA's own {DEFAULT_CA} when it exists, else the system's trusted roots)",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        default=from_env("OMA_TOKEN"),
        help="operator API token (default: $OMA_TOKEN, else the config file's; prefer the variable or the file: "
        "a flag shows in the process list)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=(True if (from_env("OMA_INSECURE") or "").lower() in ("1", "true", "yes", "on") else None)
        if defaults
        else suppress,
        help="plaintext, for a server started with --insecure (default: $OMA_INSECURE, else the config file's)",
    )


def effective_settings(args: argparse.Namespace) -> OmactlConfig:
    """Where and how to reach the OMA: each of --server, --ca, --insecure and --token from its flag, else its
    variable, else the config file (config.py), else the built-in default."""
    config = find_config(args.config)
    return OmactlConfig(
        server=args.server or config.server or DEFAULT_SERVER,
        ca=Path(args.ca) if args.ca else config.ca or (DEFAULT_CA if DEFAULT_CA.is_file() else None),
        token=args.token or config.token or "",
        insecure=args.insecure if args.insecure is not None else bool(config.insecure),
        source=config.source,
    )


def endpoint_of(args: argparse.Namespace) -> Endpoint:
    settings = effective_settings(args)
    assert settings.server is not None and settings.token is not None
    try:
        return Endpoint.from_ca_file(
            settings.server, settings.ca, insecure=bool(settings.insecure), token=settings.token
        )
    except ConnectionSettingsError as error:
        raise CliError(str(error), exit_code=2) from None


class Commands:
    """Helper the command modules use to add their groups and leaves."""

    def __init__(self, root: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        self.root = root
        self.common = Parser(add_help=False)
        global_flags(self.common, defaults=False)

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
