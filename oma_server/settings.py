"""Server configuration: flags, each also settable as OMA_<NAME> in the environment (DESIGN.md §7)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from oma_server.addresses import parse_host_port
from oma_server.errors import InvalidArgument


def env_default(name: str, default: str) -> str:
    return os.environ.get(f"OMA_{name.upper()}", default)


def env_path(name: str) -> Path | None:
    """OMA_<NAME> as a path, None when unset or empty (a flag whose default is "not given")."""
    value = env_default(name, "")
    return Path(value) if value else None


def env_flag(name: str) -> bool:
    return os.environ.get(f"OMA_{name.upper()}", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    listen: str = "127.0.0.1:50051"
    #: further names clients dial the OMA by (HOST or HOST:PORT): put in the server certificate of its own CA
    advertise_addresses: tuple[str, ...] = ()
    #: plaintext gRPC (no TLS at all): only when asked for, with a warning at start
    insecure: bool = False
    #: the operator's own server certificate (chain PEM) and key instead of the OMA's CA's
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: where appliances dial with their client certificate (mutual TLS against the OMA's CA); no listener with
    #: --insecure. `appliance_advertise` is what appliances are told to dial (empty: from the listener).
    appliance_listen: str = "127.0.0.1:50052"
    appliance_advertise: str = ""
    #: deprecated: a hello may prove an appliance by its enrollment credential (a bearer secret) instead of a
    #: certificate; always so with --insecure, where there is no TLS to carry a certificate
    allow_credential_hello: bool = False
    join_token_ttl_s: float = 24 * 3600.0
    appliance_cert_days: int = 30
    data_dir: Path = field(default_factory=lambda: Path(".oma"))
    database: str = ""  # empty: SQLite file in the data dir
    cloudstack: str = "sim"
    #: with cloudstack=sim: a JSON file describing the simulator's initial world (cloudstack/sim_seed.py)
    cloudstack_sim_seed: Path | None = None
    nbd_listen: str = "127.0.0.1:10809"
    device_root: Path = field(default_factory=lambda: Path("/dev/disk/by-id"))
    sys_root: Path = field(default_factory=lambda: Path("/sys"))
    log_json: bool = False
    log_level: str = "INFO"
    # Stream and progress tuning (DESIGN.md §4).
    heartbeat_interval_s: float = 10.0
    progress_flush_interval_s: float = 1.0
    #: several OMA processes on one PostgreSQL: how often the polling behind their notifications runs (cluster/)
    cluster_poll_interval_s: float = 5.0
    # How often the janitor looks for jobs left in a transient status after its cause passed (also at start-up).
    janitor_interval_s: float = 30.0
    # gRPC server limits.
    max_concurrent_rpcs: int = 20_000
    max_message_bytes: int = 16 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    # How long a mutating call's first answer is kept for retries with the same request_id (oma_server/idempotency.py).
    idempotency_ttl_s: float = 24 * 3600.0
    # Failover: a command run before the failed-over VM starts (volume device info in its environment; empty skips
    # the step), and the CloudStack template whose VM shell is deployed (id or name; empty: the zone's only one).
    driver_injection_command: str = ""
    failover_template: str = ""
    # The HTTP listener (dashboard and /metrics), HOST:PORT; empty: off. TLS when a certificate and key are given.
    http_listen: str = ""
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    #: how long the audit log keeps an entry
    audit_retention_days: int = 365
    #: how often a live event stream of the dashboard re-checks its token (a revoked one ends the stream)
    http_reauth_interval_s: float = 30.0
    # Schedules (oma_server/schedules): the shortest gap between a schedule's syncs; the running replication jobs
    # (in all, per appliance; 0: no limit) past which scheduled syncs wait; the scheduler's longest pause between
    # looks at the schedules and RPOs.
    schedule_min_interval_s: float = 60.0
    max_running_jobs: int = 8
    max_running_jobs_per_appliance: int = 4
    scheduler_tick_s: float = 10.0

    def validate(self) -> None:
        parse_host_port(self.listen, "--listen")
        parse_host_port(self.nbd_listen, "--nbd-listen")
        if not self.insecure:
            parse_host_port(self.appliance_listen, "--appliance-listen")
        if self.appliance_advertise:
            parse_host_port(self.appliance_advertise, "--appliance-advertise")
        if self.join_token_ttl_s <= 0 or self.appliance_cert_days < 1:
            raise InvalidArgument("--join-token-ttl must be positive and --appliance-cert-days at least 1")
        if self.heartbeat_interval_s <= 0 or self.progress_flush_interval_s <= 0:
            raise InvalidArgument("--heartbeat-interval and --progress-flush-interval must be positive")
        if self.audit_retention_days < 1:
            raise InvalidArgument("--audit-retention-days must be at least 1")
        if self.max_concurrent_rpcs < 1:
            raise InvalidArgument("--max-concurrent-rpcs must be at least 1")
        if self.idempotency_ttl_s <= 0:
            raise InvalidArgument("--idempotency-ttl must be positive (seconds a first answer is kept for retries)")
        if self.schedule_min_interval_s <= 0 or self.scheduler_tick_s <= 0:
            raise InvalidArgument("--schedule-min-interval must be positive")
        if self.max_running_jobs < 0 or self.max_running_jobs_per_appliance < 0:
            raise InvalidArgument("--max-running-jobs and --max-running-jobs-per-appliance must be 0 or more")
        if self.http_listen:
            parse_host_port(self.http_listen, "--http-listen")
        if (self.http_tls_cert is None) != (self.http_tls_key is None):
            raise InvalidArgument("--http-tls-cert and --http-tls-key go together: give both files, or neither")
        for path in (self.http_tls_cert, self.http_tls_key):
            if path is not None and not path.is_file():
                raise InvalidArgument(f"{path} is not a file; give the HTTP listener's PEM certificate and key")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("--tls-cert and --tls-key go together: give both, or neither to use the OMA's CA")
        if self.insecure and self.tls_cert is not None:
            raise InvalidArgument("--insecure serves plaintext: drop it to serve --tls-cert, or drop --tls-cert")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise InvalidArgument(f"{path} is not a file; give the PEM file of --tls-cert/--tls-key")
        if self.cloudstack_sim_seed is not None and not self.cloudstack_sim_seed.is_file():
            raise InvalidArgument(
                f"--cloudstack-sim-seed {self.cloudstack_sim_seed} is not a file; give the simulator's seed JSON"
            )

    @property
    def credential_hellos(self) -> bool:
        """Whether appliances may prove themselves with the deprecated enrollment credential."""
        return self.insecure or self.allow_credential_hello

    @property
    def tls_dir(self) -> Path:
        """The OMA's CA and its certificates (keys 0600)."""
        return self.data_dir / "tls"

    @property
    def database_url(self) -> str:
        from oma_server.db.database import default_sqlite_url

        return self.database or default_sqlite_url(self.data_dir)
