"""Prometheus metrics of the OMA: every definition in this one module, names `oma_<thing>_<unit>`.

Two kinds:
- **Events**, counted or timed where they happen (one call at that point): progress reports received, the latency
  from a report or event to its ack, database transaction time, bytes copied per appliance, CloudStack requests
  (time, errors by command and reason), failover step durations. They live in prometheus_client's default
  registry, next to its process and Python metrics.
- **State**, read at each scrape (a `ScrapeState`, read by `api/http/scrape.py`, then `render`) from the database
  and the process's live state, so a gauge can never drift from what it counts: appliances and their connections,
  streams held, jobs by status, open jobs' last change, NBD exports, each VM's recovery point (RPO = now - the
  finish of its last completed replication).

Alert rules on these: docs/prometheus-alerts.yml. Nothing here imports grpc.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()  # no `_created` series: they double the exposition and no alert reads them

# Latency buckets from a millisecond to two minutes: acks wait for the batched flush (1 s by default).
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

PROGRESS_REPORTS = Counter("oma_progress_reports_total", "Progress reports received from appliances")
ACK_LATENCY = Histogram(
    "oma_ack_latency_seconds",
    "From a report or event arriving to its ack (the oldest unacked message of the job): durable-write latency",
    buckets=_LATENCY_BUCKETS,
)
DB_TRANSACTION = Histogram(
    "oma_db_transaction_seconds", "Duration of one database unit of work, commit included", buckets=_LATENCY_BUCKETS
)
BYTES_COPIED = Counter("oma_bytes_copied_total", "Bytes appliances reported copied into NBD exports", ["appliance_id"])
CLOUDSTACK_REQUEST = Histogram(
    "oma_cloudstack_request_seconds", "One CloudStack API request (each attempt)", ["command"], buckets=_LATENCY_BUCKETS
)
CLOUDSTACK_ERRORS = Counter(
    "oma_cloudstack_errors_total", "CloudStack requests that failed, by command and reason", ["command", "reason"]
)
FAILOVER_STEP = Histogram(
    "oma_failover_step_seconds",
    "Duration of a failover step run (its retries included), by job kind, step and outcome",
    ["kind", "step", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
)


class _AckClock:
    """When the oldest message of each job not yet acked arrived: one entry per job, so memory stays bounded."""

    def __init__(self) -> None:
        self._first_unacked: dict[str, float] = {}

    def received(self, job_id: str) -> None:
        self._first_unacked.setdefault(job_id, time.monotonic())

    def acked(self, job_id: str) -> None:
        since = self._first_unacked.pop(job_id, None)
        if since is not None:
            ACK_LATENCY.observe(time.monotonic() - since)


ACKS = _AckClock()


def report_received(job_id: str) -> None:
    PROGRESS_REPORTS.inc()
    ACKS.received(job_id)


def bytes_copied(appliance_id: str, delta: int) -> None:
    """A report moved a job's bytes_done by `delta` (a smaller value — a restart from a resume point — counts 0)."""
    if delta > 0:
        BYTES_COPIED.labels(appliance_id).inc(delta)


@contextmanager
def db_transaction() -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        DB_TRANSACTION.observe(time.perf_counter() - start)


@contextmanager
def cloudstack_request(command: str) -> Iterator[None]:
    """Times one CloudStack request; a failure is counted by its reason (CloudStackError.reason, or the wrapper's
    `.error.reason`, else the exception's type)."""
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        error = getattr(exc, "error", exc)
        CLOUDSTACK_ERRORS.labels(command, getattr(error, "reason", type(error).__name__)).inc()
        raise
    finally:
        CLOUDSTACK_REQUEST.labels(command).observe(time.perf_counter() - start)


@contextmanager
def failover_step(kind: str, step: str) -> Iterator[None]:
    start = time.perf_counter()
    outcome = "failed"
    try:
        yield
        outcome = "completed"
    finally:
        FAILOVER_STEP.labels(kind, step, outcome).observe(time.perf_counter() - start)


# ---- state, read at scrape time ---------------------------------------------------------------------------------


def _epoch(value: datetime | None) -> float:
    """A naive-UTC datetime (as stored) as seconds since the epoch; 0 when unset."""
    if value is None:
        return 0.0
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class _Snapshot(Collector):
    """The state gauges of one scrape, built from one read of the database and the live process."""

    def __init__(self) -> None:
        self.families: list[GaugeMetricFamily] = []

    def gauge(self, name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> None:
        family = GaugeMetricFamily(name, doc, labels=labels)
        for values, value in samples:
            family.add_metric(values, value)
        self.families.append(family)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.families


@dataclass(frozen=True)
class ScrapeState:
    """What the state gauges show, read once per scrape (`oma_server/api/http/scrape.py` reads it)."""

    appliances: list[tuple[str, str, str, str, datetime | None]]  # id, name, status, connection state, last seen
    replication_jobs: list[tuple[str, int]]  # status, how many
    failover_jobs: list[tuple[str, str, int]]  # kind, status, how many
    exports: list[tuple[str, int]]  # recorded state, how many
    # VM context id, VM name, source snapshot time of its last completed and verified sync
    recovery_points: list[tuple[str, str, datetime]]
    # Scheduled VMs: VM context id, VM name, RPO target (s), current RPO (s, verified syncs), breached
    rpos: list[tuple[str, str, int, int, bool]]
    open_jobs: list[tuple[str, str, str, datetime | None]]  # job id, VM context id, status, last change
    sessions: int  # appliance streams held by this process
    watchers: int  # watch streams open on this process
    exports_served: int  # exports the NBD server serves now


def render(state: ScrapeState) -> bytes:
    """The exposition of every metric: the event metrics (and process metrics) plus this scrape's state."""
    snap = _Snapshot()
    appliances = state.appliances
    by_state: dict[str, int] = {}
    for _, _, _, connection, _ in appliances:
        by_state[connection] = by_state.get(connection, 0) + 1
    snap.gauge(
        "oma_appliances",
        "Enrolled appliances by connection state",
        ["connection_state"],
        (([s], n) for s, n in sorted(by_state.items())),
    )
    active = [a for a in appliances if a[2] == "active"]
    snap.gauge(
        "oma_appliance_connected",
        "1 while the appliance's stream is up, else 0 (active appliances)",
        ["appliance_id", "appliance"],
        (([i, name], float(connection == "connected")) for i, name, _, connection, _ in active),
    )
    snap.gauge(
        "oma_appliance_last_seen_timestamp_seconds",
        "When the appliance last sent anything (0: never)",
        ["appliance_id", "appliance"],
        (([i, name], _epoch(seen)) for i, name, _, _, seen in active),
    )
    snap.gauge("oma_stream_sessions", "Appliance streams held by this OMA process", [], [([], state.sessions)])
    snap.gauge("oma_watchers", "Job watch streams open on this OMA process", [], [([], state.watchers)])
    snap.gauge(
        "oma_replication_jobs",
        "Replication jobs by status",
        ["status"],
        (([s], n) for s, n in state.replication_jobs),
    )
    snap.gauge(
        "oma_failover_jobs",
        "Failover, cleanup and rollback jobs by kind and status",
        ["kind", "status"],
        (([k, s], n) for k, s, n in state.failover_jobs),
    )
    snap.gauge(
        "oma_replication_job_updated_timestamp_seconds",
        "When each open replication job last changed (a stuck job stops moving)",
        ["job_id", "vm_context_id", "status"],
        (([j, vm, status], _epoch(updated)) for j, vm, status, updated in state.open_jobs),
    )
    snap.gauge("oma_nbd_exports", "NBD exports by recorded state", ["state"], (([s], n) for s, n in state.exports))
    snap.gauge("oma_nbd_exports_served", "Exports the NBD server serves now", [], [([], state.exports_served)])
    _vm_gauges(snap, state)
    local = CollectorRegistry(auto_describe=False)
    local.register(snap)
    return generate_latest(REGISTRY) + generate_latest(local)


def _vm_gauges(snap: _Snapshot, state: ScrapeState) -> None:
    """Each VM's recovery point, and the RPO of the VMs a schedule targets."""
    snap.gauge(
        "oma_vm_recovery_point_timestamp_seconds",
        "Each VM's recovery point: source snapshot time of its last completed, verified sync (RPO = time() - this)",
        ["vm_context_id", "vm"],
        (([i, name], _epoch(last)) for i, name, last in state.recovery_points),
    )
    snap.gauge(
        "oma_vm_rpo_target_seconds",
        "RPO target of each VM a schedule targets",
        ["vm_context_id", "vm"],
        (([i, name], target) for i, name, target, _, _ in state.rpos),
    )
    snap.gauge(
        "oma_vm_rpo_seconds",
        "Current RPO of each scheduled VM: age of its last completed and verified sync (since its start)",
        ["vm_context_id", "vm"],
        (([i, name], current) for i, name, _, current, _ in state.rpos),
    )
    snap.gauge(
        "oma_vm_rpo_breached",
        "1 while a scheduled VM's RPO is over its target (or it has no verified sync yet), else 0",
        ["vm_context_id", "vm"],
        (([i, name], float(breached)) for i, name, _, _, breached in state.rpos),
    )
