"""`oma-server`: serve (default) or migrate. Every flag is also OMA_<NAME> in the environment.

Errors a user can fix (bad flag, unreachable database, port in use) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

from loguru import logger

from oma_server.errors import DomainError, InvalidArgument
from oma_server.logging import configure_logging
from oma_server.settings import Settings, env_default, env_flag, env_path
from oma_server.stop_signals import StopSignals
from oma_server.version import __version__

SUBCOMMANDS = ("serve", "migrate", "create-token")
EXIT_USAGE = 2


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _common_flags() -> _OneLineParser:
    p = _OneLineParser(add_help=False)
    g = p.add_argument_group("flags of serve (the default) and migrate (each is also OMA_<NAME> in the environment)")
    _network_flags(g)
    _state_flags(g)
    _tuning_flags(g)
    _http_and_log_flags(g)
    return p


def _network_flags(g: argparse._ArgumentGroup) -> None:
    """Flags: the gRPC listener and its TLS."""
    g.add_argument("--listen", default=env_default("listen", "127.0.0.1:50051"), help="gRPC HOST:PORT")
    g.add_argument(
        "--advertise-address",
        action="append",
        default=[a for a in env_default("advertise_address", "").split(",") if a.strip()],
        help="a name or address clients dial this OMA by (repeat; OMA_ADVERTISE_ADDRESS comma-separated): put in "
        "the server certificate",
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        default=env_flag("insecure"),
        help="serve plaintext gRPC (no TLS): for a trusted loopback only",
    )
    g.add_argument(
        "--tls-cert",
        type=Path,
        default=env_path("tls_cert"),
        help="your own server certificate chain (PEM) instead of one from the OMA's CA (with --tls-key)",
    )
    g.add_argument(
        "--tls-key",
        type=Path,
        default=env_path("tls_key"),
        help="the private key (PEM) of --tls-cert",
    )
    g.add_argument(
        "--appliance-listen",
        default=env_default("appliance_listen", "127.0.0.1:50052"),
        help="HOST:PORT appliances dial with their client certificate (mutual TLS; off with --insecure)",
    )
    g.add_argument(
        "--appliance-advertise",
        default=env_default("appliance_advertise", ""),
        help="HOST:PORT appliances are told to dial (default: --appliance-listen's, its host from --advertise-address "
        "when it listens on every interface)",
    )
    g.add_argument(
        "--allow-credential-hello",
        action="store_true",
        default=env_flag("allow_credential_hello"),
        help="deprecated: also take appliances by the bearer credential of their enrollment, without a certificate",
    )
    g.add_argument(
        "--join-token-ttl",
        type=float,
        default=float(env_default("join_token_ttl", "86400")),
        help="seconds an appliance's join token is good for (default 86400: a day)",
    )
    g.add_argument(
        "--appliance-cert-days",
        type=int,
        default=int(env_default("appliance_cert_days", "30")),
        help="lifetime of an appliance client certificate in days (appliances renew at two thirds)",
    )


def _state_flags(g: argparse._ArgumentGroup) -> None:
    """Flags: where state lives, the cloud, the NBD server and the devices."""
    g.add_argument("--data-dir", type=Path, default=Path(env_default("data_dir", ".oma")), help="state directory")
    g.add_argument(
        "--database",
        default=env_default("database", ""),
        help="sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB (default: SQLite in the data dir)",
    )
    g.add_argument(
        "--cloudstack",
        default=env_default("cloudstack", "sim"),
        help="'sim' (in-process simulator) or a CloudStack API URL; keys in OMA_CLOUDSTACK_API_KEY/SECRET_KEY",
    )
    g.add_argument(
        "--cloudstack-sim-seed",
        type=Path,
        default=env_path("cloudstack_sim_seed"),
        help="with --cloudstack sim: a JSON file of the simulator's initial world (limits, offerings, ...)",
    )
    g.add_argument("--nbd-listen", default=env_default("nbd_listen", "127.0.0.1:10809"), help="NBD server HOST:PORT")
    g.add_argument(
        "--device-root",
        type=Path,
        default=Path(env_default("device_root", "/dev/disk/by-id")),
        help="where attached volumes appear (with --cloudstack sim: the simulator's dev/disk/by-id)",
    )
    g.add_argument(
        "--sys-root",
        type=Path,
        default=Path(env_default("sys_root", "/sys")),
        help="sysfs, to confirm a found device's serial (with --cloudstack sim: the simulator's guest sys)",
    )


def _tuning_flags(g: argparse._ArgumentGroup) -> None:
    """Flags: intervals, limits and failover choices."""
    g.add_argument(
        "--progress-flush-interval",
        type=float,
        default=float(env_default("progress_flush_interval", "1.0")),
        help="seconds between batched progress writes (default 1.0)",
    )
    g.add_argument(
        "--janitor-interval",
        type=float,
        default=float(env_default("janitor_interval", "30")),
        help="seconds between the janitor's looks at jobs left without a cause (with several OMA processes: also "
        "how soon a dead process's unfinished jobs are taken over; default 30)",
    )
    g.add_argument(
        "--scheduler-tick",
        type=float,
        default=float(env_default("scheduler_tick", "10")),
        help="seconds between the scheduler's passes (with several OMA processes: also how soon another takes the "
        "lead when the scheduler's process dies; default 10)",
    )
    g.add_argument(
        "--cluster-poll-interval",
        type=float,
        default=float(env_default("cluster_poll_interval", "5")),
        help="with several OMA processes on one PostgreSQL: seconds between the checks that back up their "
        "notifications (commands pending for this process's appliances, answers stored by another; default 5)",
    )
    g.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(env_default("heartbeat_interval", "10")),
        help="seconds between appliance heartbeats; 3 missed mark it disconnected (default 10)",
    )
    g.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=int(env_default("max_concurrent_rpcs", "20000")),
        help="cap on concurrent RPCs incl. streams; more get RESOURCE_EXHAUSTED",
    )
    g.add_argument(
        "--idempotency-ttl",
        type=float,
        default=float(env_default("idempotency_ttl", "86400")),
        help="seconds a call's first answer is kept for its retries with the same request_id (default 86400: 24 h)",
    )
    g.add_argument(
        "--driver-injection-command",
        default=env_default("driver_injection_command", ""),
        help="shell command run during failover before the VM starts, with OMA_FAILOVER_VOLUMES (JSON) etc. in its "
        "environment; empty skips the step",
    )
    g.add_argument(
        "--failover-template",
        default=env_default("failover_template", ""),
        help="CloudStack template (id or name) failed-over VMs are deployed from; empty: the zone's only template",
    )


def _http_and_log_flags(g: argparse._ArgumentGroup) -> None:
    """Flags: the HTTP listener, logging."""
    g.add_argument(
        "--http-listen",
        default=env_default("http_listen", ""),
        help="HOST:PORT of the dashboard and Prometheus /metrics (aiohttp); empty (default): off",
    )
    g.add_argument(
        "--http-tls-cert",
        type=Path,
        default=env_path("http_tls_cert"),
        help="PEM certificate of the HTTP listener (with --http-tls-key): serve https",
    )
    g.add_argument(
        "--http-tls-key",
        type=Path,
        default=env_path("http_tls_key"),
        help="PEM private key of the HTTP listener",
    )
    g.add_argument(
        "--audit-retention-days",
        type=int,
        default=int(env_default("audit_retention_days", "365")),
        help="how long the audit log of mutating RPCs keeps an entry (default 365 days)",
    )
    g.add_argument(
        "--schedule-min-interval",
        type=float,
        default=float(env_default("schedule_min_interval", "60")),
        help="the shortest gap between a schedule's syncs, in seconds (default 60)",
    )
    g.add_argument(
        "--max-running-jobs",
        type=int,
        default=int(env_default("max_running_jobs", "8")),
        help="schedules start no sync while this many replication jobs run in all (0: no limit; default 8)",
    )
    g.add_argument(
        "--max-running-jobs-per-appliance",
        type=int,
        default=int(env_default("max_running_jobs_per_appliance", "4")),
        help="... or while this many run on the VM's appliance (0: no limit; default 4)",
    )
    g.add_argument("--log-json", action="store_true", default=env_flag("log_json"), help="JSON log lines")
    g.add_argument("--log-level", default=env_default("log_level", "INFO"), help="DEBUG, INFO, WARNING, ERROR")


def _flags_help() -> str:
    """The serve/migrate flags, for the top-level --help (argparse shows a subcommand's flags only in its own)."""
    listing = argparse.ArgumentParser(usage=argparse.SUPPRESS, parents=[_common_flags()], add_help=False)
    return listing.format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="oma-server",
        description="OMA control plane: the gRPC service that drives VMware→CloudStack migrations. "
        "With no subcommand it serves.",
        epilog=_flags_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"oma-server {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_OneLineParser)
    common = _common_flags()
    sub.add_parser("serve", parents=[common], help="run the server (default)")
    sub.add_parser("migrate", parents=[common], help="apply database migrations and exit")
    token = sub.add_parser(
        "create-token", parents=[common], help="make an operator API token in the database and print it once"
    )
    token.add_argument("--name", required=True, help="who or what uses it (1-63 letters, digits, '.', '_', '@', '-')")
    token.add_argument("--role", required=True, choices=("viewer", "operator", "admin"), help="what it may do")
    token.add_argument("--ttl", default="never", help="lifetime: 90d, 12h, 30m, 45s (default: never)")
    token.add_argument(
        "--omactl-config",
        metavar="FILE",
        type=Path,
        help="also write an omactl config file (0600): --listen's address (or --advertise-address's host), the "
        "OMA's own CA, the new token; must not exist",
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        listen=args.listen,
        advertise_addresses=tuple(a.strip() for a in args.advertise_address),
        insecure=args.insecure,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        appliance_listen=args.appliance_listen,
        appliance_advertise=args.appliance_advertise,
        allow_credential_hello=args.allow_credential_hello,
        join_token_ttl_s=args.join_token_ttl,
        appliance_cert_days=args.appliance_cert_days,
        data_dir=args.data_dir,
        database=args.database,
        cloudstack=args.cloudstack,
        cloudstack_sim_seed=args.cloudstack_sim_seed,
        nbd_listen=args.nbd_listen,
        device_root=args.device_root,
        sys_root=args.sys_root,
        log_json=args.log_json,
        log_level=args.log_level.upper(),
        heartbeat_interval_s=args.heartbeat_interval,
        progress_flush_interval_s=args.progress_flush_interval,
        cluster_poll_interval_s=args.cluster_poll_interval,
        janitor_interval_s=args.janitor_interval,
        scheduler_tick_s=args.scheduler_tick,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        idempotency_ttl_s=args.idempotency_ttl,
        driver_injection_command=args.driver_injection_command,
        failover_template=args.failover_template,
        http_listen=args.http_listen,
        http_tls_cert=args.http_tls_cert,
        http_tls_key=args.http_tls_key,
        audit_retention_days=args.audit_retention_days,
        schedule_min_interval_s=args.schedule_min_interval,
        max_running_jobs=args.max_running_jobs,
        max_running_jobs_per_appliance=args.max_running_jobs_per_appliance,
    )


def _with_default_subcommand(argv: list[str]) -> list[str]:
    if any(a in SUBCOMMANDS for a in argv) or any(a in ("-h", "--help", "--version") for a in argv[:1]):
        return argv
    return ["serve", *argv]


async def _migrate(settings: Settings) -> None:
    """Open the database and apply the migrations: nothing else starts (no simulator, no nbd-server)."""
    from oma_server.app import prepare_database
    from oma_server.db.database import Database
    from oma_server.db.sqlite_owner import SqliteOwnership, sqlite_path

    database_file = sqlite_path(settings.database_url)
    owner = SqliteOwnership(database_file) if database_file is not None else None
    if owner is not None:
        owner.acquire("migrating")  # not under a serving OMA's feet
    db = Database(settings.database_url)
    try:
        print(f"database at schema version {await prepare_database(db)}")
    finally:
        db.close()
        if owner is not None:
            owner.release()


async def _create_token(settings: Settings, name: str, role: str, ttl: str, config_file: Path | None) -> None:
    """Open the database (migrated), make the token, print its secret on stdout and what it is on stderr; with
    `config_file`, also write an omactl config with it."""
    from oma_server.app import prepare_database
    from oma_server.db.database import Database
    from oma_server.omactl.tokens import ttl_seconds  # the lifetimes omactl tokens create reads, the same way
    from oma_server.security.tokens import Role, TokenService

    try:
        ttl_s = ttl_seconds(ttl)
    except argparse.ArgumentTypeError as error:
        raise InvalidArgument(str(error)) from None
    db = Database(settings.database_url)
    try:
        await prepare_database(db)
        issued = await TokenService(db).create(name, Role.parse(role), timedelta(seconds=ttl_s) if ttl_s else None)
    finally:
        db.close()
    expires = f"expires {issued.token.expires_at:%Y-%m-%d %H:%M} UTC" if issued.token.expires_at else "no expiry"
    print(issued.secret, flush=True)
    print(f"API token {name} (id {issued.token.id}, role {role}, {expires}); shown once", file=sys.stderr)
    if config_file is not None:
        _write_omactl_config(settings, config_file, issued.secret)
        print(f"wrote {config_file} (0600): OMA_CONFIG={config_file} omactl ...", file=sys.stderr)


def _write_omactl_config(settings: Settings, path: Path, secret: str) -> None:
    """The address omactl dials (the --listen port as configured) and the CA it verifies with: the OMA's own,
    unless the OMA serves an operator's --tls-cert (then the system's roots) or plaintext (--insecure)."""
    from oma_server.addresses import parse_host_port
    from oma_server.omactl import config
    from oma_server.security.ca import CA_CERT_FILE
    from oma_server.security.server_tls import dial_endpoint

    _, port = parse_host_port(settings.listen, "--listen")
    own_ca = not settings.insecure and settings.tls_cert is None
    server = dial_endpoint(settings.listen, settings.advertise_addresses, port)
    ca = settings.tls_dir / CA_CERT_FILE if own_ca else None
    config.write(path, server=server, ca=ca, token=secret, insecure=settings.insecure)


async def _serve(settings: Settings, signals: StopSignals) -> None:
    from oma_server.app import App
    from oma_server.server import serve

    await serve(App(settings), signals)


def main(argv: list[str] | None = None) -> int:
    # First of all: from here to the process's exit, SIGTERM/SIGINT are a stop request, never a kill.
    signals = StopSignals()
    signals.install()
    args = build_parser().parse_args(_with_default_subcommand(list(sys.argv[1:] if argv is None else argv)))
    settings = settings_from(args)
    configure_logging(json=settings.log_json, level=settings.log_level)
    try:
        settings.validate()
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
        elif args.command == "create-token":
            if args.omactl_config is not None and args.omactl_config.exists():  # refused before a token exists
                raise InvalidArgument(f"--omactl-config {args.omactl_config} exists; give a new path (or remove it)")
            asyncio.run(_create_token(settings, args.name, args.role, args.ttl, args.omactl_config))
        else:
            asyncio.run(_serve(settings, signals))
    except DomainError as error:
        print(f"oma-server: error: {error.message}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"oma-server: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        logger.info("interrupted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
