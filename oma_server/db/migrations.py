"""Versioned schema migrations, applied at start and by `oma-server migrate`.

Each migration is a function of the Peewee database, numbered; `schema_migration` records what ran. Add new
migrations at the end, never edit an applied one.
"""

from __future__ import annotations

from collections.abc import Callable

import peewee as pw
from loguru import logger
from playhouse.migrate import SchemaMigrator, migrate

from oma_server.db.integrity_models import INTEGRITY_MODELS, BlockMap, SourceHashRun, SourcePieceHash
from oma_server.db.models import (
    ALL_MODELS,
    ApiToken,
    Appliance,
    ApplianceCertificate,
    AuditEntry,
    BandwidthLimit,
    Disk,
    GroupMember,
    GroupRun,
    IdempotencyRecord,
    JobDisk,
    MachineGroup,
    ReplicationJob,
    Schedule,
    SchemaMigration,
    WatchRevision,
)


def _add_missing_columns(db: pw.Database, model: type[pw.Model], added: dict[str, pw.Field]) -> None:
    """Add the columns `model`'s table lacks (a database created at the migration's version already has them)."""
    table = model._meta.table_name  # type: ignore[attr-defined]
    columns = {c.name for c in db.get_columns(table)}
    missing = [name for name in added if name not in columns]
    if missing:
        migrator = SchemaMigrator.from_database(db)
        migrate(*(migrator.add_column(table, name, added[name]) for name in missing))


def _m001_initial(db: pw.Database) -> None:
    # The models as they were at version 1; later columns are added by later migrations.
    db.create_tables([*ALL_MODELS, *INTEGRITY_MODELS], safe=True)


def _m002_disk_replicated_capacity(db: pw.Database) -> None:
    _add_missing_columns(db, Disk, {"replicated_capacity_bytes": pw.BigIntegerField(default=0)})


def _m003_watch_revision(db: pw.Database) -> None:
    db.create_tables([WatchRevision], safe=True)  # a database created at version 3 already has it


def _m004_api_token(db: pw.Database) -> None:
    db.create_tables([ApiToken], safe=True)  # a database created at version 4 already has it


def _m005_block_map(db: pw.Database) -> None:
    db.create_tables([BlockMap], safe=True)  # a database created at version 5 already has it


def _m006_idempotency_record(db: pw.Database) -> None:
    db.create_tables([IdempotencyRecord], safe=True)  # a database created at version 6 already has it


def _m007_audit_entry(db: pw.Database) -> None:
    db.create_tables([AuditEntry], safe=True)  # a database created at version 7 already has it


def _m008_schedule(db: pw.Database) -> None:
    db.create_tables([Schedule], safe=True)  # a database created at version 8 already has it


def _m009_bandwidth_limit(db: pw.Database) -> None:
    db.create_tables([BandwidthLimit], safe=True)  # a database created at version 9 already has it


def _m010_machine_groups(db: pw.Database) -> None:
    db.create_tables([MachineGroup, GroupMember, GroupRun], safe=True)  # a database created at 10 already has them


def _m011_block_map_check(db: pw.Database) -> None:
    added: dict[str, pw.Field] = {
        "check_job_id": pw.CharField(max_length=64, default=""),
        "checked_at": pw.DateTimeField(null=True),
        "check_outcome": pw.CharField(max_length=16, default=""),
        "check_digest": pw.CharField(max_length=128, default=""),
        "check_mismatched": pw.TextField(null=True),  # JsonField's column type
    }
    _add_missing_columns(db, BlockMap, added)


def _m012_appliance_certificates(db: pw.Database) -> None:
    added: dict[str, pw.Field] = {
        "join_token_hash": pw.CharField(max_length=128, default=""),
        "join_token_expires_at": pw.DateTimeField(null=True),
        "joined_at": pw.DateTimeField(null=True),
        "certificate_serial": pw.CharField(max_length=64, default=""),
        "certificate_expires_at": pw.DateTimeField(null=True),
    }
    _add_missing_columns(db, Appliance, added)
    db.create_tables([ApplianceCertificate], safe=True)


def _m013_certificate_superseded_by(db: pw.Database) -> None:
    _add_missing_columns(db, ApplianceCertificate, {"superseded_by": pw.CharField(max_length=64, default="")})


def _m014_job_disk_repair_extents(db: pw.Database) -> None:
    _add_missing_columns(db, JobDisk, {"repair_extents": pw.TextField(null=True)})  # JsonField's column type


def _m015_source_hashes(db: pw.Database) -> None:
    db.create_tables([SourceHashRun, SourcePieceHash], safe=True)  # a database created at 15 already has them
    _add_missing_columns(db, BlockMap, {"source_compared": pw.BigIntegerField(default=0)})


def _m016_job_write_version(db: pw.Database) -> None:
    _add_missing_columns(db, ReplicationJob, {"write_version": pw.BigIntegerField(default=0)})


MIGRATIONS: list[tuple[int, str, Callable[[pw.Database], None]]] = [
    (1, "initial schema", _m001_initial),
    (2, "disk.replicated_capacity_bytes (resize detection)", _m002_disk_replicated_capacity),
    (3, "watch_revision (revisions that survive a crash)", _m003_watch_revision),
    (4, "api_token (operators' API tokens, hashed)", _m004_api_token),
    (5, "block_map (block-hash maps of the replicas, per change id)", _m005_block_map),
    (6, "idempotency_record (first answers to calls with a request_id)", _m006_idempotency_record),
    (7, "audit_entry (the audit log of mutating RPCs)", _m007_audit_entry),
    (8, "schedule (replication schedules with an RPO target)", _m008_schedule),
    (9, "bandwidth_limit (copy-rate limits with weekly windows)", _m009_bandwidth_limit),
    (10, "machine_group, group_member, group_run (machine groups and their failovers)", _m010_machine_groups),
    (11, "block_map.check_* (the last on-demand verification of a replica at rest)", _m011_block_map_check),
    (12, "appliance.join_token_*, appliance_certificate (appliance client certificates)", _m012_appliance_certificates),
    (13, "appliance_certificate.superseded_by (a renewal revokes its predecessor)", _m013_certificate_superseded_by),
    (14, "job_disk.repair_extents (blocks an incremental recopies to repair a replica)", _m014_job_disk_repair_extents),
    (15, "source_hash_run, source_piece_hash, block_map.source_compared (the source's hashes)", _m015_source_hashes),
    (16, "replication_job.write_version (writes fenced across OMA processes)", _m016_job_write_version),
]

LATEST_VERSION = MIGRATIONS[-1][0]


def current_version(db: pw.Database) -> int:
    if not db.table_exists(SchemaMigration._meta.table_name):  # type: ignore[attr-defined]
        return 0
    latest = SchemaMigration.select(pw.fn.MAX(SchemaMigration.version)).scalar()
    return int(latest or 0)


def apply_migrations(db: pw.Database) -> list[int]:
    """Apply every pending migration, each in its own transaction; returns the versions applied."""
    db.create_tables([SchemaMigration], safe=True)
    applied: list[int] = []
    for version, name, step in MIGRATIONS:
        with db.atomic():
            if SchemaMigration.get_or_none(SchemaMigration.version == version) is not None:
                continue
            step(db)
            SchemaMigration.create(version=version, name=name)
        logger.info("applied migration {version}: {name}", version=version, name=name)
        applied.append(version)
    return applied
