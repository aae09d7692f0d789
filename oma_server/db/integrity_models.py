"""Peewee models of replica verification (oma_server/integrity): the block-hash maps of the replicas and the
source's hashes the appliances send. Apart from models.py so each stays one concept; its tables follow that
module's (`INTEGRITY_MODELS`, created after `ALL_MODELS`)."""

from __future__ import annotations

import peewee as pw

from oma_server.db.models import BaseModel, Disk, JsonField, ReplicationJob, utcnow


class BlockMap(BaseModel):
    """A disk's block-hash map at one change id (oma_server/integrity): what its replica read back as.
    `pending` rows are syncs whose read-back has not run yet, with the byte extents the sync covered (`extents`,
    null: the whole disk); `verified` rows hold the hashes (HASH_SIZE bytes per block, in disk order) and the digest.
    The `check_*` columns are the last comparison of the replica with this map or the source: its job (the sync's own
    when its read-back compared the source's hashes; a VerifyVmContext job at rest, integrity/at_rest.py), time,
    outcome (`passed` | `mismatch`), the digest read and the mismatching block ranges (`[[first, count], ...]`)."""

    id = pw.AutoField()
    disk_id: str  # set by Peewee for the foreign key
    disk = pw.ForeignKeyField(Disk, backref="block_maps", on_delete="CASCADE")
    change_id = pw.CharField(max_length=255)
    job_id = pw.CharField(max_length=64, default="")
    status = pw.CharField(max_length=16, default="pending", index=True)
    algorithm = pw.CharField(max_length=16)
    block_size = pw.IntegerField()
    capacity_bytes = pw.BigIntegerField()
    extents = JsonField(null=True)
    hashes = pw.BlobField(null=True)
    digest = pw.CharField(max_length=128, default="")
    blocks_read = pw.BigIntegerField(default=0)
    source_compared = pw.BigIntegerField(default=0)  # blocks read compared with the appliance's source hashes
    created_at = pw.DateTimeField(default=utcnow)
    verified_at = pw.DateTimeField(null=True)
    check_job_id = pw.CharField(max_length=64, default="")
    checked_at = pw.DateTimeField(null=True)
    check_outcome = pw.CharField(max_length=16, default="")
    check_digest = pw.CharField(max_length=128, default="")
    check_mismatched = JsonField(null=True)

    class Meta:
        indexes = ((("disk", "change_id"), True),)


class SourceHashRun(BaseModel):
    """The source's hashes of `count` blocks from `first_block` as the appliance sent them in a job (vma.v1.BlockHashes;
    null: all-zero blocks), which the read-back of the job's sync compares the replica with (integrity/verifier.py)."""

    id = pw.AutoField()
    job_id: str  # set by Peewee for the foreign key
    job = pw.ForeignKeyField(ReplicationJob, backref="source_hash_runs", on_delete="CASCADE")
    disk_id: str  # set by Peewee for the foreign key
    disk = pw.ForeignKeyField(Disk, backref="source_hash_runs", on_delete="CASCADE")
    first_block = pw.BigIntegerField()
    count = pw.IntegerField()
    hashes = pw.BlobField(null=True)

    class Meta:
        indexes = ((("job", "disk", "first_block"), True),)


class SourcePieceHash(BaseModel):
    """The source's hash of a piece of a block an incremental copied in part (vma.v1.PieceHash), sent in a job."""

    id = pw.AutoField()
    job_id: str  # set by Peewee for the foreign key
    job = pw.ForeignKeyField(ReplicationJob, backref="source_piece_hashes", on_delete="CASCADE")
    disk_id: str  # set by Peewee for the foreign key
    disk = pw.ForeignKeyField(Disk, backref="source_piece_hashes", on_delete="CASCADE")
    offset = pw.BigIntegerField()
    length = pw.IntegerField()
    hash = pw.BlobField()

    class Meta:
        indexes = ((("job", "disk", "offset"), True),)


INTEGRITY_MODELS: list[type[BaseModel]] = [BlockMap, SourceHashRun, SourcePieceHash]
