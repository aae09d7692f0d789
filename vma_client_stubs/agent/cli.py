"""`vma-agent`: the reference VMware Migration Appliance and its fake vCenter.

    vma-agent enroll --join-file F --identity-dir DIR [--ca FILE]
    vma-agent run --identity-dir DIR --vcenter-dir DIR --state-dir DIR
    vma-agent run --oma HOST:PORT --appliance-id ID --credential-file F ...   (deprecated: a credential hello)
    vma-agent create-vm --vcenter-dir DIR --name NAME --disk-mib 256 --disk-mib 128 [--seed N]
    vma-agent guest-write --vcenter-dir DIR --vm NAME --percent 5 [--seed N]
    vma-agent list --vcenter-dir DIR [--json]

`enroll` makes the appliance's own key, verifies the OMA against the CA fingerprint of the join file (written by
`omactl appliances enroll --join-file`), trades the join token and a CSR for its client certificate, and keeps them
in the identity directory (key 0600). `run --identity-dir` then dials the appliance port that directory names with
mutual TLS and renews the certificate before it expires. The deprecated credential may come from the environment
(VMA_CREDENTIAL) instead of a file. Bad flags: one line, exit 2.
SIGTERM or SIGINT stops `run` cleanly: copies pause at their last acknowledged point and resume at the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from loguru import logger

from vma_client_stubs.agent.agent import Agent, CopyOptions, agent_version
from vma_client_stubs.agent.vcenter import FakeVCenter, VCenterError
from vma_client_stubs.connection import ConnectionSettingsError, Endpoint
from vma_client_stubs.identity import (
    NBD_DIR,
    ApplianceIdentity,
    CertificateRenewer,
    IdentityError,
    JoinTicket,
    join,
)

MIB = 1 << 20
LOG_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[appliance_id]}</cyan> {extra[job_id]} {extra[disk_id]} {message}"
)


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def _host_ports(value: str) -> str:
    """One OMA address, or several processes of one OMA comma-separated (the stream moves between them)."""
    return ",".join(_host_port(part.strip()) for part in value.split(","))


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def _add_enroll(sub: Any) -> None:
    """`vma-agent enroll`: its flags."""
    enroll = sub.add_parser("enroll", help="join the OMA: trade a join file for this appliance's certificate")
    enroll.add_argument("--join-file", required=True, type=Path, help="from `omactl appliances enroll --join-file`")
    enroll.add_argument("--identity-dir", required=True, type=Path, help="where the key and certificates go")
    enroll.add_argument("--oma", type=_host_port, help="the OMA's operator port HOST:PORT (default: the join file's)")
    enroll.add_argument(
        "--ca",
        type=Path,
        help="the CA of an OMA whose operator port serves an operator's --tls-cert (default: pinned by the join file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vma-agent", description="Reference VMware Migration Appliance (fake vCenter).")
    parser.add_argument("--version", action="version", version=f"vma-agent {agent_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_enroll(sub)

    run = sub.add_parser("run", help="dial the OMA and obey its commands")
    run.add_argument("--identity-dir", type=Path, help="the identity `vma-agent enroll` made: mutual TLS")
    run.add_argument(
        "--oma", type=_host_ports, help="OMA address HOST:PORT, or several processes of one OMA as HOST:PORT,HOST:PORT "
        "(the stream moves to the next when one fails; default: the identity's appliance port)",
    )  # fmt: skip
    run.add_argument(
        "--ca",
        type=Path,
        default=Path(os.environ["VMA_OMA_CA"]) if os.environ.get("VMA_OMA_CA") else None,
        help="the OMA's CA certificate to verify its TLS port against (or VMA_OMA_CA; default: system roots)",
    )
    run.add_argument("--insecure", action="store_true", help="plaintext, for an OMA started with --insecure")
    run.add_argument("--appliance-id", help="with --credential-file (deprecated); the identity names it otherwise")
    run.add_argument("--credential-file", type=Path, help="deprecated: the enrollment credential (or VMA_CREDENTIAL)")
    run.add_argument("--vcenter-dir", required=True, type=Path)
    run.add_argument("--state-dir", required=True, type=Path)
    run.add_argument("--listen", default="127.0.0.1:0", type=_host_port, help="local vma.v1 API (port 0: any)")
    run.add_argument("--chunk-mib", type=_positive, default=2.0, help="copy request size in MiB (1-4)")
    run.add_argument("--window", type=int, default=8, help="NBD requests in flight per connection (1-64)")
    run.add_argument("--connections", type=int, default=4, help="NBD connections per disk, if multi-conn (1-16)")
    run.add_argument("--disks-per-job", type=int, default=4, help="disks of one job copied at once (1-64)")
    run.add_argument("--copies-per-appliance", type=int, default=8, help="disk copies of all jobs at once (1-256)")
    run.add_argument(
        "--max-rate-mib",
        type=_positive,
        default=None,
        help="rate limit of all this appliance's copies together, MiB/s (the OMA's limits apply too)",
    )
    run.add_argument("--report-interval", type=_positive, default=0.5, help="seconds between progress reports")
    run.add_argument("--target-wait", type=_positive, default=120.0, help="seconds a copy retries a lost NBD export")
    run.add_argument("--log-json", action="store_true")
    run.add_argument("--log-level", default="INFO")

    create = sub.add_parser("create-vm", help="create a VM with varied data and holes in the fake vCenter")
    create.add_argument("--vcenter-dir", required=True, type=Path)
    create.add_argument("--name", required=True)
    create.add_argument("--disk-mib", required=True, type=int, action="append", help="disk size in MiB (repeat)")
    create.add_argument("--seed", type=int, default=None)
    create.add_argument("--cpus", type=int, default=2)
    create.add_argument("--memory-mib", type=int, default=2048)
    create.add_argument("--firmware", choices=("bios", "efi"), default="bios")
    create.add_argument("--powered-off", action="store_true")

    write = sub.add_parser("guest-write", help="simulate guest writes (recorded by CBT)")
    write.add_argument("--vcenter-dir", required=True, type=Path)
    write.add_argument("--vm", required=True, help="VM name or uuid")
    write.add_argument("--percent", required=True, type=_positive)
    write.add_argument("--seed", type=int, default=None)

    ls = sub.add_parser("list", help="list the fake vCenter's VMs")
    ls.add_argument("--vcenter-dir", required=True, type=Path)
    ls.add_argument("--json", action="store_true")
    return parser


def configure_logging(json_logs: bool, level: str) -> None:
    logger.remove()
    logger.configure(extra={"appliance_id": "-", "job_id": "", "disk_id": ""})
    if json_logs:
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        logger.add(sys.stderr, level=level, format=LOG_FORMAT, colorize=sys.stderr.isatty())


def _credential(args: argparse.Namespace) -> str:
    if args.credential_file is not None:
        try:
            secret = args.credential_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read --credential-file: {exc.strerror}") from exc
    else:
        secret = os.environ.get("VMA_CREDENTIAL", "").strip()
    if not secret:
        raise UsageError("a credential is required: --credential-file FILE or VMA_CREDENTIAL")
    return secret


async def _run(args: argparse.Namespace, credential: str, oma: Endpoint, identity: ApplianceIdentity | None) -> int:
    from vma_client_stubs.agent.service import AgentService
    from vma_client_stubs.stream_client import AuthenticationError

    chunk = int(args.chunk_mib * MIB)
    chunk -= chunk % 4096
    renewer = CertificateRenewer(identity, args.identity_dir) if identity is not None else None
    appliance_id = identity.appliance_id if identity is not None else args.appliance_id
    agent = Agent(
        oma=oma,
        appliance_id=appliance_id,
        credential=credential,
        identity=renewer,
        vcenter=FakeVCenter(args.vcenter_dir),
        state_dir=args.state_dir,
        copy=CopyOptions(
            chunk_size=chunk,
            window=args.window,
            connections=args.connections,
            disks_per_job=args.disks_per_job,
            copies_per_appliance=args.copies_per_appliance,
            max_bytes_per_second=args.max_rate_mib * MIB if args.max_rate_mib else None,
            nbd_certificates=args.identity_dir / NBD_DIR if identity is not None else None,
            target_wait_s=args.target_wait,
        ),
        report_interval_s=args.report_interval,
    )
    service = AgentService(agent, args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    port = await service.start()
    host = args.listen.rpartition(":")[0]
    logger.bind(appliance_id=appliance_id).info(
        "vma-agent {v} dialing {oma} ({transport}); local API on {host}:{port}",
        v=agent.version,
        oma=agent.client.target,
        transport="mutual TLS" if renewer else "PLAINTEXT, --insecure" if oma.insecure else "TLS, credential hello",
        host=host,
        port=port,
    )
    print(f"listening {host}:{port}", flush=True)
    closed = asyncio.ensure_future(agent.client.wait_closed())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if closed.done() and isinstance(closed.exception(), AuthenticationError):
        print(f"vma-agent: the OMA refused this appliance: {closed.exception()}", file=sys.stderr)
        code = 1
    stopped.cancel()
    logger.bind(appliance_id=appliance_id).info("stopping")
    await service.stop(0.5)
    await agent.stop()
    if not closed.done():
        closed.cancel()
    return code


def _vm_row(vcenter: FakeVCenter, vm: Any) -> dict[str, Any]:
    return {
        "uuid": vm.uuid,
        "name": vm.name,
        "power_state": vm.power_state,
        "disks": [
            {
                "key": d.key,
                "capacity_bytes": d.capacity_bytes,
                "path": str(vcenter.vm_dir(vm.uuid) / d.file),
                "change_id": vcenter.current_change_id(vm.uuid, d.key)[0],
            }
            for d in vm.disks
        ],
    }


def _checked_run_flags(args: argparse.Namespace) -> tuple[str, Endpoint, ApplianceIdentity | None]:
    """The bounds of `run`'s copy flags checked (UsageError); its identity, or its credential and the OMA's
    endpoint."""
    if not 1 <= args.chunk_mib <= 4:
        raise UsageError("--chunk-mib must be between 1 and 4")
    for flag, value, top in (
        ("--window", args.window, 64),
        ("--connections", args.connections, 16),
        ("--disks-per-job", args.disks_per_job, 64),
        ("--copies-per-appliance", args.copies_per_appliance, 256),
    ):
        if not 1 <= value <= top:
            raise UsageError(f"{flag} must be between 1 and {top}")
    if args.identity_dir is not None:
        try:
            identity = ApplianceIdentity.load(args.identity_dir)
        except IdentityError as exc:
            raise UsageError(str(exc)) from exc
        expired = identity.certificate.not_valid_after_utc
        if expired <= datetime.now(UTC):  # no handshake would take it, nor renew it: say so instead of retrying
            raise UsageError(
                f"the appliance certificate in {args.identity_dir} expired at {expired:%Y-%m-%d %H:%M} UTC (the agent "
                "was not running to renew it): ask an admin to revoke the appliance and enroll it again, then join "
                "with the new join file"
            )
        if args.oma:  # another name of the same appliance port (a load balancer, a DNS name)
            identity = replace(identity, appliance_endpoint=args.oma)
        return "", Endpoint(identity.appliance_endpoint), identity
    if not args.oma or not args.appliance_id:
        raise UsageError("give --identity-dir (from `vma-agent enroll`), or --oma, --appliance-id and a credential")
    credential = _credential(args)
    try:
        oma = Endpoint.from_ca_file(args.oma, args.ca, insecure=args.insecure)
    except ConnectionSettingsError as exc:
        raise UsageError(str(exc)) from exc
    return credential, oma, None


async def _enroll(args: argparse.Namespace) -> int:
    """Join the OMA with the join file; the identity goes to --identity-dir."""
    import grpc

    from vma_client_stubs.errors import error_details_of

    ticket = JoinTicket.load(args.join_file)
    if args.oma:
        ticket = replace(ticket, oma=args.oma)
    trust = None
    if args.ca is not None:
        try:
            trust = args.ca.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --ca {args.ca}: {exc.strerror}") from exc
    try:
        identity = await join(ticket, trust=trust)
    except grpc.aio.AioRpcError as exc:
        reason = error_details_of(exc).reason
        print(f"vma-agent: the OMA refused the join ({reason or exc.code().name}): {exc.details()}", file=sys.stderr)
        return 1
    identity.save(args.identity_dir)
    until = identity.certificate.not_valid_after_utc
    print(
        f"joined as appliance {identity.appliance_id}; certificate valid until {until:%Y-%m-%d %H:%M} UTC (renewed "
        f"while running); identity in {args.identity_dir}. Start: vma-agent run --identity-dir {args.identity_dir} "
        "--vcenter-dir DIR --state-dir DIR"
    )
    return 0


def _vcenter_command(args: argparse.Namespace) -> int:
    """create-vm, guest-write, list: the fake vCenter's own commands."""
    vcenter = FakeVCenter(args.vcenter_dir)
    if args.command == "create-vm":
        if any(m <= 0 for m in args.disk_mib):
            print("vma-agent: error: --disk-mib must be positive", file=sys.stderr)
            return 2
        vm = vcenter.create_vm(
            args.name,
            [m * MIB for m in args.disk_mib],
            seed=args.seed,
            num_cpus=args.cpus,
            memory_mib=args.memory_mib,
            firmware=args.firmware,
            power_state="off" if args.powered_off else "on",
        )
        print(vm.uuid)
        return 0
    if args.command == "guest-write":
        vm = vcenter.find_vm(args.vm)
        written = vcenter.guest_write(vm.uuid, args.percent, seed=args.seed)
        for key, extents in written.items():
            print(f"disk {key}: {sum(n for _, n in extents)} bytes changed in {len(extents)} extents")
        return 0
    if args.command == "list":
        rows = [_vm_row(vcenter, vm) for vm in vcenter.list_vms()]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                sizes = ", ".join(f"{d['key']}:{d['capacity_bytes'] // MIB} MiB" for d in row["disks"])
                print(f"{row['uuid']}  {row['name']:<20} {row['power_state']:<4} {sizes}")
        return 0
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            credential, oma, identity = _checked_run_flags(args)
        if args.command == "enroll":
            return asyncio.run(_enroll(args))
    except (UsageError, IdentityError) as exc:
        print(f"vma-agent: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            configure_logging(args.log_json, args.log_level.upper())
            return asyncio.run(_run(args, credential, oma, identity))
        return _vcenter_command(args)
    except VCenterError as exc:
        print(f"vma-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
