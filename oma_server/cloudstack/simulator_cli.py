"""`oma-cloudstack-sim`: run the CloudStack simulator as a standalone HTTP server.

    oma-cloudstack-sim --listen 127.0.0.1:8080 --state-dir DIR [--api-key K --secret-key S] [--seed FILE]

It prints `CLOUDSTACK_ENDPOINT=... CLOUDSTACK_KEY=... CLOUDSTACK_SECRET=...` on its first line, so that after
exporting those `cs listZones` talks to it, and on its second what `oma-server --cloudstack URL` needs besides:
`OMA_CLOUDSTACK_ZONE=... OMA_CLOUDSTACK_OMA_VM_ID=... DEVICE_ROOT=... SYS_ROOT=...` (for --device-root and
--sys-root). SIGINT/SIGTERM stop it cleanly (exit 0); bad flags exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from loguru import logger

from oma_server.addresses import parse_host_port
from oma_server.cloudstack.simulator import CloudStackSimulator
from oma_server.errors import InvalidArgument


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"oma-cloudstack-sim: error: {message}\n")
        raise SystemExit(2)


def _listen(value: str) -> str:
    try:
        parse_host_port(value, "--listen")
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(e.message) from None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="oma-cloudstack-sim", description="A CloudStack API simulator for the OMA.")
    parser.add_argument("--listen", type=_listen, default="127.0.0.1:8080", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--state-dir", type=Path, required=True, help="where volumes and the world are kept")
    parser.add_argument("--api-key", default=None, help="API key (default: generated once, kept in the state dir)")
    parser.add_argument("--secret-key", default=None, help="secret key (default: generated once)")
    parser.add_argument("--seed", type=Path, default=None, help="JSON file describing the initial world")
    parser.add_argument("--log-level", default="INFO", help="loguru level (default %(default)s)")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    sim = CloudStackSimulator(
        args.state_dir, listen=args.listen, api_key=args.api_key, secret_key=args.secret_key, seed_config=args.seed
    )
    await sim.start()
    print(f"CLOUDSTACK_ENDPOINT={sim.url} CLOUDSTACK_KEY={sim.api_key} CLOUDSTACK_SECRET={sim.secret_key}", flush=True)
    print(
        f"OMA_CLOUDSTACK_ZONE={sim.zone_id} OMA_CLOUDSTACK_OMA_VM_ID={sim.oma_vm_id} DEVICE_ROOT={sim.device_root} "
        f"SYS_ROOT={sim.sys_root}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.api_key is not None and args.secret_key is None) or (args.secret_key is not None and args.api_key is None):
        parser.error("--api-key and --secret-key go together")
    if args.seed is not None and not args.seed.is_file():
        parser.error(f"seed file {args.seed} does not exist")
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    try:
        return asyncio.run(_serve(args))
    except OSError as e:
        sys.stderr.write(f"oma-cloudstack-sim: error: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
