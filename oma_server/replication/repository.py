"""Where replication jobs are kept: the `JobRepository` contract, on the database (`SqlJobRepository`, SQLite and
PostgreSQL through Peewee) and in memory (`MemoryJobRepository`, for fast tests of the store and the applier).

Methods run inside a unit of work of the store's runner (`Database.tx` / `Database.run` for SQL: on a database
thread, in one transaction; `db.runner.InlineRunner` for memory); nothing here is async. One contract suite
(tests/test_job_repository.py) runs on all three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol

import peewee as pw

from oma_server.db.models import ChangeIdRecord, Disk, FailoverJob, JobDisk, ReplicationJob, on_postgresql
from oma_server.errors import AlreadyExists
from oma_server.integrity import maps
from oma_server.integrity.blocks import Extent
from oma_server.joblog import note
from oma_server.pagination import decode_token as page_offset
from oma_server.pagination import fetch_page, next_token, page_size_of
from oma_server.replication.state_machine import (
    DISK_PROGRESS_FIELDS,
    FINAL,
    PROGRESS_FIELDS,
    DiskState,
    JobState,
    JobStatus,
)


def row_to_state(row: ReplicationJob, disks: Iterable[JobDisk]) -> JobState:
    return JobState(
        id=row.id,
        vm_context_id=row.vm_context_id,
        appliance_id=row.appliance_id,
        kind=row.kind,
        status=JobStatus(row.status),
        phase=row.phase,
        current_operation=row.current_operation,
        bytes_done=row.bytes_done,
        bytes_total=row.bytes_total,
        percent=row.percent,
        throughput_bytes_per_second=row.throughput_bytes_per_second,
        eta_seconds=row.eta_seconds,
        error_reason=row.error_reason,
        error_message=row.error_message,
        error_class=row.error_class,
        last_sequence=row.last_sequence,
        revision=row.revision,
        write_version=row.write_version,
        retry_of=row.retry_of,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        updated_at=row.updated_at,
        disks=[
            DiskState(
                disk_id=d.disk_id,
                disk_key=d.disk.key,
                bytes_done=d.bytes_done,
                bytes_total=d.bytes_total,
                throughput_bytes_per_second=d.throughput_bytes_per_second,
                phase=d.phase,
                mode=d.mode,
                previous_change_id=d.previous_change_id,
                new_change_id=d.new_change_id,
                completed=d.completed,
                nbd_uri=d.nbd_uri,
                full_copy_reason=d.full_copy_reason,
                resume_token=d.resume_token,
                repair_extents=tuple((int(o), int(n)) for o, n in d.repair_extents or ()),
            )
            for d in sorted(disks, key=lambda d: d.disk.unit_number)
        ],
    )


def load(job_id: str) -> JobState | None:
    row = ReplicationJob.get_or_none(ReplicationJob.id == job_id)
    if row is None:
        return None
    disks = list(JobDisk.select(JobDisk, Disk).join(Disk).where(JobDisk.job == job_id))
    return row_to_state(row, disks)


# What a row is written from: the progress fields (those a progress flush changes) and the rest of the job.
_JOB_COLUMNS = (
    "status",
    *PROGRESS_FIELDS,
    "error_reason",
    "error_message",
    "error_class",
    "revision",
    "started_at",
    "finished_at",
)
_DISK_COLUMNS = (
    *DISK_PROGRESS_FIELDS,
    "previous_change_id",
    "new_change_id",
    "completed",
    "nbd_uri",
    "full_copy_reason",
    "resume_token",
)


def _update_sql(model: type[pw.Model], columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    meta = model._meta  # type: ignore[attr-defined]
    param = meta.database.param
    sets = ", ".join(f"{meta.fields[c].column_name} = {param}" for c in columns)
    where = " AND ".join(f"{meta.fields[k].column_name} = {param}" for k in keys)
    return f"UPDATE {meta.table_name} SET {sets} WHERE {where}"


def _row_values(model: type[pw.Model], columns: tuple[str, ...], obj: object) -> list[object]:
    fields = model._meta.fields  # type: ignore[attr-defined]
    values = []
    for column in columns:
        value = getattr(obj, column)
        if column == "current_operation":
            value = value[:512]
        values.append(fields[column].db_value(value.value if isinstance(value, JobStatus) else value))
    return values


class JobChangedElsewhere(Exception):
    """A job's row was written by someone else (another OMA process) since this copy of it was loaded."""

    def __init__(self, job_ids: list[str]) -> None:
        super().__init__(f"job(s) {', '.join(job_ids)} changed in the database since they were loaded")
        self.job_ids = job_ids


def _stale(states: list[JobState]) -> list[str]:
    """The jobs among `states` whose row moved past the version they were loaded at, their rows locked until the
    commit on PostgreSQL (so nothing else writes them between this check and the UPDATE)."""
    db = ReplicationJob._meta.database  # type: ignore[attr-defined]
    ids = [s.id for s in states]
    param = db.param
    sql = f"SELECT id, write_version FROM replication_job WHERE id IN ({', '.join([param] * len(ids))})"
    if on_postgresql():
        sql += " FOR UPDATE"
    versions = dict(db.execute_sql(sql, ids).fetchall())
    return [s.id for s in states if s.id in versions and versions[s.id] != s.write_version]


def _execute_batch(cursor: object, sql: str, rows: list[list[object]]) -> None:
    from psycopg2.extras import execute_batch

    execute_batch(cursor, sql, rows, page_size=100)


def write_batch(states: list[JobState]) -> list[str]:
    """Write jobs and their disks as they are in `states` (inside the caller's transaction); a job whose row was
    written elsewhere since its state was loaded is left as it is. Returns those jobs' ids.

    The fence: every write adds one to the row's `write_version`; a state carries the version it was loaded or last
    written at. Two prepared UPDATEs run with executemany: building Peewee queries per row cost ~0.4 ms a job, which
    at a thousand jobs a second held the GIL long enough to delay every watcher (measured in bench.progress). On
    PostgreSQL psycopg2's `execute_batch` sends them a hundred statements per round trip (its executemany makes
    one round trip per row: 14 % of the server's samples at 1,000 reports/s in py-spy).
    """
    if not states:
        return []
    stale = _stale(states)
    if stale:
        skipped = set(stale)
        states = [s for s in states if s.id not in skipped]
    db = ReplicationJob._meta.database  # type: ignore[attr-defined]
    job_rows = [[*_row_values(ReplicationJob, _JOB_COLUMNS, s), s.write_version + 1, s.id] for s in states]
    disk_rows = [[*_row_values(JobDisk, _DISK_COLUMNS, d), s.id, d.disk_id] for s in states for d in s.disks]
    cursor = db.cursor()
    many = _execute_batch if on_postgresql() else type(cursor).executemany
    many(cursor, _update_sql(ReplicationJob, (*_JOB_COLUMNS, "write_version"), ("id",)), job_rows)
    if disk_rows:
        many(cursor, _update_sql(JobDisk, _DISK_COLUMNS, ("job", "disk")), disk_rows)
    for state in states:
        state.write_version += 1
    return stale


def write(state: JobState) -> None:
    """Write one job (see write_batch); raises JobChangedElsewhere when its row was written since it was loaded."""
    stale = write_batch([state])
    if stale:
        raise JobChangedElsewhere(stale)


def open_versions() -> dict[str, int]:
    """Job id → row version of every job not final (one query)."""
    query = ReplicationJob.select(ReplicationJob.id, ReplicationJob.write_version).where(
        ReplicationJob.status.not_in([s.value for s in FINAL])
    )
    return {r.id: int(r.write_version) for r in query}


def load_open() -> list[JobState]:
    """Every job not final."""
    query = ReplicationJob.select(ReplicationJob.id).where(ReplicationJob.status.not_in([s.value for s in FINAL]))
    return [s for s in (load(r.id) for r in query) if s is not None]


def load_open_of(appliance_id: str) -> list[JobState]:
    """Every job of one appliance not final."""
    query = ReplicationJob.select(ReplicationJob.id).where(
        (ReplicationJob.appliance == appliance_id) & ReplicationJob.status.not_in([s.value for s in FINAL])
    )
    return [s for s in (load(r.id) for r in query) if s is not None]


def highest_revision() -> int:
    """The highest watch revision stored with any job."""
    return int(
        max(
            ReplicationJob.select(pw.fn.MAX(ReplicationJob.revision)).scalar() or 0,
            FailoverJob.select(pw.fn.MAX(FailoverJob.revision)).scalar() or 0,
        )
    )


def insert(state: JobState, request_id: str | None, disks: list[DiskState]) -> JobState:
    """A new job row with its disks, as `state` says; returns it as stored."""
    if request_id and ReplicationJob.get_or_none(ReplicationJob.request_id == request_id) is not None:
        raise request_id_taken(request_id)
    try:
        with ReplicationJob._meta.database.atomic():  # type: ignore[attr-defined]  # a savepoint: PostgreSQL can go on
            row = ReplicationJob.create(
                id=state.id,
                vm_context=state.vm_context_id,
                appliance=state.appliance_id,
                kind=state.kind,
                status=state.status.value,
                current_operation=state.current_operation,
                request_id=request_id or None,
                retry_of=state.retry_of,
                revision=state.revision,
                created_at=state.created_at,
                updated_at=state.updated_at,
            )
    except pw.IntegrityError:
        if request_id and ReplicationJob.get_or_none(ReplicationJob.request_id == request_id) is not None:
            raise request_id_taken(request_id) from None  # a concurrent insert with the same request_id won
        raise
    for disk in disks:
        JobDisk.create(
            job=row.id,
            disk=disk.disk_id,
            bytes_total=disk.bytes_total,
            mode=disk.mode,
            previous_change_id=disk.previous_change_id,
            nbd_uri=disk.nbd_uri,
            full_copy_reason=disk.full_copy_reason,
            repair_extents=[list(e) for e in disk.repair_extents] or None,
        )
    stored = load(row.id)
    assert stored is not None
    return stored


def record_change_id(job_id: str, disk_id: str, change_id: str, synced: Sequence[Extent] | None = None) -> None:
    """A disk's new change id, from the job that copied it: the disk's current one, and a line of its history; its
    block-hash map at that change id waits for the replica's read-back of `synced` (None: the whole disk)."""
    Disk.update(last_change_id=change_id, replicated_capacity_bytes=Disk.capacity_bytes).where(
        Disk.id == disk_id
    ).execute()
    ChangeIdRecord.create(disk=disk_id, change_id=change_id, job_id=job_id)
    note(job_id, "disk_completed", f"disk {disk_id}: change id {change_id} recorded")
    maps.record_sync(job_id, disk_id, change_id, synced)


def change_ids(disk_id: str) -> list[tuple[str, str]]:
    """A disk's change-id history, oldest first: (change id, job id)."""
    query = ChangeIdRecord.select().where(ChangeIdRecord.disk == disk_id).order_by(ChangeIdRecord.id)
    return [(r.change_id, r.job_id) for r in query]


def request_id_taken(request_id: str) -> AlreadyExists:
    return AlreadyExists(f"a replication job with request_id {request_id!r} already exists", reason="REQUEST_ID_REUSED")


def page(
    page_size: int, page_token: str, vm_context_id: str = "", appliance_id: str = "", statuses: Iterable[str] = ()
) -> tuple[list[str], str]:
    """Ids of one page of jobs, newest first, and the next page's token."""
    wanted = list(statuses)
    q = ReplicationJob.select(ReplicationJob.id).order_by(ReplicationJob.created_at.desc(), ReplicationJob.id)
    if vm_context_id:
        q = q.where(ReplicationJob.vm_context == vm_context_id)
    if appliance_id:
        q = q.where(ReplicationJob.appliance == appliance_id)
    if wanted:
        q = q.where(ReplicationJob.status.in_(wanted))
    rows, token = fetch_page(q, page_size, page_token)
    return [r.id for r in rows], token


class JobRepository(Protocol):
    def load(self, job_id: str) -> JobState | None: ...
    def load_open(self) -> list[JobState]: ...
    def load_open_of(self, appliance_id: str) -> list[JobState]: ...
    def open_versions(self) -> dict[str, int]: ...
    def highest_revision(self) -> int: ...
    def insert(self, state: JobState, request_id: str | None, disks: list[DiskState]) -> JobState: ...
    def write(self, state: JobState) -> None: ...
    def write_batch(self, states: list[JobState]) -> list[str]: ...
    def record_change_id(
        self, job_id: str, disk_id: str, change_id: str, synced: Sequence[Extent] | None = None
    ) -> None: ...
    def change_ids(self, disk_id: str) -> list[tuple[str, str]]: ...
    def page(
        self,
        page_size: int,
        page_token: str,
        vm_context_id: str = "",
        appliance_id: str = "",
        statuses: Iterable[str] = (),
    ) -> tuple[list[str], str]: ...


class SqlJobRepository:
    """The jobs' rows in SQLite or PostgreSQL (the functions above)."""

    load = staticmethod(load)
    load_open = staticmethod(load_open)
    load_open_of = staticmethod(load_open_of)
    open_versions = staticmethod(open_versions)
    highest_revision = staticmethod(highest_revision)
    insert = staticmethod(insert)
    write = staticmethod(write)
    write_batch = staticmethod(write_batch)
    record_change_id = staticmethod(record_change_id)
    change_ids = staticmethod(change_ids)
    page = staticmethod(page)


class MemoryJobRepository:
    """Jobs in a dict, as the SQL repository keeps them (copies in, copies out)."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobState] = {}
        self._request_ids: dict[str, str] = {}
        self._change_ids: dict[str, list[tuple[str, str]]] = {}

    def load(self, job_id: str) -> JobState | None:
        job = self._jobs.get(job_id)
        return None if job is None else job.copy()

    def load_open(self) -> list[JobState]:
        return [j.copy() for j in self._jobs.values() if j.status not in FINAL]

    def load_open_of(self, appliance_id: str) -> list[JobState]:
        return [j for j in self.load_open() if j.appliance_id == appliance_id]

    def open_versions(self) -> dict[str, int]:
        return {j.id: j.write_version for j in self._jobs.values() if j.status not in FINAL}

    def highest_revision(self) -> int:
        return max((j.revision for j in self._jobs.values()), default=0)

    def insert(self, state: JobState, request_id: str | None, disks: list[DiskState]) -> JobState:
        if request_id and request_id in self._request_ids:
            raise request_id_taken(request_id)
        stored = dataclasses.replace(state, disks=[dataclasses.replace(d) for d in disks])
        self._jobs[state.id] = stored
        if request_id:
            self._request_ids[request_id] = state.id
        return stored.copy()

    def write(self, state: JobState) -> None:
        stale = self.write_batch([state])
        if stale:
            raise JobChangedElsewhere(stale)

    def write_batch(self, states: list[JobState]) -> list[str]:
        stale = []
        for state in states:
            stored = self._jobs.get(state.id)
            if stored is None:
                continue  # an UPDATE of a missing row changes nothing
            if stored.write_version != state.write_version:
                stale.append(state.id)
                continue
            state.write_version += 1
            self._jobs[state.id] = state.copy()
        return stale

    def record_change_id(
        self, job_id: str, disk_id: str, change_id: str, synced: Sequence[Extent] | None = None
    ) -> None:
        self._change_ids.setdefault(disk_id, []).append((change_id, job_id))

    def change_ids(self, disk_id: str) -> list[tuple[str, str]]:
        return list(self._change_ids.get(disk_id, []))

    def page(
        self,
        page_size: int,
        page_token: str,
        vm_context_id: str = "",
        appliance_id: str = "",
        statuses: Iterable[str] = (),
    ) -> tuple[list[str], str]:
        wanted = set(statuses)
        jobs = [
            j
            for j in self._jobs.values()
            if (not vm_context_id or j.vm_context_id == vm_context_id)
            and (not appliance_id or j.appliance_id == appliance_id)
            and (not wanted or j.status.value in wanted)
        ]
        jobs.sort(key=lambda j: j.id)
        jobs.sort(key=lambda j: j.created_at or 0, reverse=True)  # type: ignore[arg-type,return-value]
        size, offset = page_size_of(page_size), page_offset(page_token)
        chosen = jobs[offset : offset + size + 1]
        return [j.id for j in chosen[:size]], next_token(offset, size, len(chosen))
