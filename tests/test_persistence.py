"""Persistence on both stores: migrations, models, the database runner."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import peewee as pw
import pytest

from oma_server.appliances import ApplianceService, credential_matches
from oma_server.db.database import Database, open_peewee, redact_url
from oma_server.db.migrations import LATEST_VERSION, apply_migrations, current_version
from oma_server.db.models import Appliance, Disk, VmContext
from oma_server.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated, Unavailable


async def test_migrations_are_versioned_and_idempotent(db: Database) -> None:
    assert await db.run(current_version, db.peewee) == LATEST_VERSION
    assert await db.run(apply_migrations, db.peewee) == []  # nothing left to apply
    tables = set(await db.run(db.peewee.get_tables))
    assert {"appliance", "vm_context", "disk", "replication_job", "command", "schema_migration"} <= tables


async def test_db_work_runs_off_the_event_loop(db: Database) -> None:
    loop_thread = threading.get_ident()
    worker_thread = await db.run(threading.get_ident)
    assert worker_thread != loop_thread


async def test_transaction_is_all_or_nothing(db: Database) -> None:
    appliance = await db.tx(Appliance.create, name="vma-tx", credential_hash="x")

    def half_done() -> None:
        vm = VmContext.create(appliance=appliance.id, vcenter="vc", vm_uuid="u1", name="vm1")
        Disk.create(vm_context=vm.id, key=2000, capacity_bytes=1)
        Disk.create(vm_context=vm.id, key=2000, capacity_bytes=1)  # violates the unique (vm, key) index

    with pytest.raises(pw.IntegrityError):
        await db.tx(half_done)
    assert await db.run(VmContext.select().count) == 0
    assert await db.run(Disk.select().count) == 0


async def test_enrollment_stores_only_a_hash(db: Database) -> None:
    service = ApplianceService(db, credential_hellos=True)  # an OMA with --allow-credential-hello makes credentials
    enrollment = await service.enroll("vma-01")
    stored = await db.run(Appliance.get_by_id, enrollment.appliance.id)
    assert enrollment.join_token.startswith("oma-join_") and enrollment.join_token not in stored.join_token_hash
    assert stored.join_token_hash == hashlib.sha256(enrollment.join_token.encode()).hexdigest()
    assert enrollment.credential not in stored.credential_hash
    assert credential_matches(enrollment.credential, stored.credential_hash)
    assert not credential_matches(enrollment.credential + "x", stored.credential_hash)
    assert (await service.authenticate(stored.id, enrollment.credential)).id == stored.id
    with pytest.raises(Unauthenticated):
        await service.authenticate(stored.id, "wrong")
    with pytest.raises(AlreadyExists):
        await service.enroll("vma-01")
    await service.revoke(stored.id)
    with pytest.raises(Unauthenticated) as revoked:
        await service.authenticate(stored.id, enrollment.credential)
    assert revoked.value.reason == "APPLIANCE_REVOKED"


@pytest.mark.parametrize("name", ["", "has space", "-leading-dash", "x" * 64, "semi;colon", "new\nline"])
async def test_enrollment_refuses_bad_names(db: Database, name: str) -> None:
    with pytest.raises(InvalidArgument):
        await ApplianceService(db).enroll(name)
    assert await db.run(Appliance.select().count) == 0


async def test_list_pages_through_everything(db: Database) -> None:
    service = ApplianceService(db)
    for i in range(7):
        await service.enroll(f"vma-{i}")
    seen: list[str] = []
    token = ""
    while True:
        page = await service.list(3, token, None)
        seen += [a.name for a in page.appliances]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == [f"vma-{i}" for i in range(7)]
    with pytest.raises(NotFound):
        await service.get("no-such-id")


async def test_concurrent_writers_do_not_lose_rows(db: Database) -> None:
    service = ApplianceService(db)
    await asyncio.gather(*(service.enroll(f"vma-c{i}") for i in range(40)))
    assert await db.run(Appliance.select().count) == 40


def test_unreachable_postgres_is_a_clear_unavailable() -> None:
    database = Database("postgresql://oma:secret@127.0.0.1:1/oma")
    with pytest.raises(Unavailable) as err:
        database.check_connection()
    assert "secret" not in err.value.message
    assert "127.0.0.1:1" in err.value.message
    database.close()


def test_bad_urls_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        open_peewee("mysql://x/y")
    with pytest.raises(InvalidArgument):
        open_peewee("postgresql://host/")
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


_APPLIANCE_IDENTITY_COLUMNS = (
    "join_token_hash",
    "join_token_expires_at",
    "joined_at",
    "certificate_serial",
    "certificate_expires_at",
)


async def test_a_version_1_database_is_migrated_forward(db: Database) -> None:
    from playhouse.migrate import SchemaMigrator, migrate

    from oma_server.db.integrity_models import BlockMap, SourceHashRun
    from oma_server.db.models import (
        ApiToken,
        ApplianceCertificate,
        AuditEntry,
        BandwidthLimit,
        GroupMember,
        GroupRun,
        IdempotencyRecord,
        MachineGroup,
        Schedule,
        SchemaMigration,
        WatchRevision,
    )

    def downgrade() -> None:  # what a database created by version 0.1.0 looks like
        migrator = SchemaMigrator.from_database(db.peewee)
        migrate(migrator.drop_column("disk", "replicated_capacity_bytes"))
        migrate(migrator.drop_column("job_disk", "repair_extents"))
        migrate(migrator.drop_column("block_map", "source_compared"))
        migrate(migrator.drop_column("replication_job", "write_version"))
        migrate(*(migrator.drop_column("appliance", c) for c in _APPLIANCE_IDENTITY_COLUMNS))
        db.peewee.drop_tables(
            [
                ApplianceCertificate,
                WatchRevision,
                ApiToken,
                BlockMap,
                IdempotencyRecord,
                AuditEntry,
                Schedule,
                BandwidthLimit,
                GroupRun,
                GroupMember,
                MachineGroup,
                SourceHashRun,
            ]
        )
        SchemaMigration.delete().where(SchemaMigration.version > 1).execute()

    await db.run(downgrade)
    assert await db.run(current_version, db.peewee) == 1
    assert await db.run(apply_migrations, db.peewee) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    columns = {c.name for c in await db.run(db.peewee.get_columns, "disk")}
    assert "replicated_capacity_bytes" in columns
    assert await db.run(db.peewee.table_exists, "watch_revision")
    assert await db.run(db.peewee.table_exists, "api_token")
    assert await db.run(db.peewee.table_exists, "block_map")
    assert await db.run(db.peewee.table_exists, "idempotency_record")
    assert await db.run(db.peewee.table_exists, "audit_entry")
    assert await db.run(db.peewee.table_exists, "schedule")
    assert await db.run(db.peewee.table_exists, "bandwidth_limit")
    for table in ("machine_group", "group_member", "group_run"):
        assert await db.run(db.peewee.table_exists, table)
    block_map = {c.name for c in await db.run(db.peewee.get_columns, "block_map")}
    assert {"check_job_id", "checked_at", "check_outcome", "check_digest", "check_mismatched"} <= block_map
    appliance = {c.name for c in await db.run(db.peewee.get_columns, "appliance")}
    assert set(_APPLIANCE_IDENTITY_COLUMNS) <= appliance
    assert await db.run(db.peewee.table_exists, "appliance_certificate")
    assert "repair_extents" in {c.name for c in await db.run(db.peewee.get_columns, "job_disk")}
    assert await db.run(db.peewee.table_exists, "source_hash_run")
    assert "source_compared" in {c.name for c in await db.run(db.peewee.get_columns, "block_map")}
    assert "write_version" in {c.name for c in await db.run(db.peewee.get_columns, "replication_job")}

    def back_to_12() -> None:  # a database of a 0.3 build before renewals retired their predecessors
        migrator = SchemaMigrator.from_database(db.peewee)
        migrate(migrator.drop_column("appliance_certificate", "superseded_by"))
        migrate(migrator.drop_column("job_disk", "repair_extents"))
        migrate(migrator.drop_column("block_map", "source_compared"))
        migrate(migrator.drop_column("replication_job", "write_version"))
        SchemaMigration.delete().where(SchemaMigration.version > 12).execute()

    await db.run(back_to_12)
    assert await db.run(apply_migrations, db.peewee) == [13, 14, 15, 16]
    certificate = {c.name for c in await db.run(db.peewee.get_columns, "appliance_certificate")}
    assert "superseded_by" in certificate
    assert "repair_extents" in {c.name for c in await db.run(db.peewee.get_columns, "job_disk")}
