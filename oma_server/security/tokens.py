"""Operators' API tokens: a role each, an optional expiry, revocable; only a hash of the secret is stored.

A token reads `oma_<id>_<secret>`: the id finds its row (one indexed read, no scan over every token), the secret is
256 random bits compared by its SHA-256 in constant time. A fast hash is right for a secret of that entropy — a slow
KDF protects guessable passwords and would only slow every call. The initial admin token is made at the first start
(no token exists yet), shown once and kept in `<data dir>/admin.token` (0600) for the operator to move away.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum
from pathlib import Path

from oma_server.db.database import Database
from oma_server.db.models import ApiToken, utcnow
from oma_server.errors import InvalidArgument, NotFound, Unauthenticated
from oma_server.pagination import fetch_page
from vma_client_stubs.secret_files import write_private

_TOKEN = re.compile(r"\Aoma_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._@-]{0,62}\Z")
INITIAL_ADMIN_NAME = "initial-admin"
ADMIN_TOKEN_FILE = "admin.token"


class Role(IntEnum):
    """What an operator may do; a higher role includes the lower ones."""

    VIEWER = 1  # reads and watches
    OPERATOR = 2  # replication, failover, network maps
    ADMIN = 3  # appliances, tokens

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InvalidArgument(
                f"role {text!r} is not one of viewer, operator, admin", reason="ROLE_INVALID", role=text
            ) from None


@dataclass(frozen=True)
class Operator:
    """Who called: a token's id, name and role."""

    token_id: str
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"token:{self.name} ({self.token_id})"


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    #: `oma_<id>_<secret>`: given once to whoever asked for it, never logged, never stored
    secret: str


def read_admin_token(data_dir: Path) -> str:
    """The initial admin token the first start wrote to `data_dir` ("" when there is none)."""
    try:
        return (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, role: Role, ttl: timedelta | None = None) -> IssuedToken:
        if not _NAME.match(name):
            raise InvalidArgument(
                f"token name {name!r} is invalid: use 1-63 letters, digits, '.', '_', '@' or '-'",
                reason="TOKEN_NAME_INVALID",
                name=name,
            )
        if ttl is not None and ttl <= timedelta(0):
            raise InvalidArgument("a token's lifetime must be positive (or none)", reason="TOKEN_TTL_INVALID")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        expires_at: datetime | None = utcnow() + ttl if ttl is not None else None
        row = await self.db.tx(
            lambda: ApiToken.create(
                id=token_id, name=name, role=role.label, secret_hash=_hash(secret), expires_at=expires_at
            )
        )
        return IssuedToken(row, f"oma_{token_id}_{secret}")

    async def ensure_initial_admin(self, data_dir: Path) -> Path | None:
        """At the first start (no token at all): an admin token, written 0600 to `<data dir>/admin.token`; the
        path, or None when tokens exist already."""
        if await self.db.run(lambda: ApiToken.select().exists()):
            return None
        issued = await self.create(INITIAL_ADMIN_NAME, Role.ADMIN)
        path = data_dir / ADMIN_TOKEN_FILE
        write_private(path, (issued.secret + "\n").encode())
        return path

    async def authenticate(self, presented: str) -> Operator:
        match = _TOKEN.match(presented)
        row = await self.db.run(ApiToken.get_or_none, ApiToken.id == match.group(1)) if match else None
        # One answer for a malformed, unknown or wrong token: a caller learns nothing about which tokens exist.
        if match is None or row is None or not hmac.compare_digest(row.secret_hash, _hash(match.group(2))):
            raise Unauthenticated(
                "the API token is not valid; ask an admin for one (oma-server create-token, omactl tokens create)",
                reason="TOKEN_INVALID",
            )
        if row.revoked_at is not None:
            raise Unauthenticated(
                f"API token {row.name} ({row.id}) was revoked; ask an admin for a new one",
                reason="TOKEN_REVOKED",
                token_id=row.id,
            )
        if row.expires_at is not None and row.expires_at <= utcnow():
            raise Unauthenticated(
                f"API token {row.name} ({row.id}) expired at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC; ask for a new one",
                reason="TOKEN_EXPIRED",
                token_id=row.id,
            )
        return Operator(row.id, row.name, Role.parse(row.role))

    async def revoke(self, token_id: str) -> ApiToken:
        def revoke() -> ApiToken:
            row = ApiToken.get_or_none(ApiToken.id == token_id)
            if row is None:
                raise NotFound(f"API token {token_id} does not exist", reason="TOKEN_NOT_FOUND", token_id=token_id)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                row.save()
            return row

        return await self.db.tx(revoke)

    async def list(self, page_size: int = 0, page_token: str = "") -> tuple[list[ApiToken], str]:
        """One page of the tokens, oldest first, and the next page's token."""
        query = ApiToken.select().order_by(ApiToken.created_at, ApiToken.id)
        return await self.db.run(fetch_page, query, page_size, page_token)
