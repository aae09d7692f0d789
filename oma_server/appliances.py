"""Appliances (VMAs): enrollment (a one-time join token, traded for a client certificate by
security/appliance_identity.py), the deprecated credential hello, revocation."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import peewee as pw

from oma_server.db.database import Database
from oma_server.db.models import Appliance, ApplianceCertificate, utcnow
from oma_server.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from oma_server.pagination import fetch_page
from oma_server.security.appliance_identity import hash_join_token, new_join_token
from oma_server.uninterruptible import finish

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def hash_credential(credential: str, salt: str | None = None) -> str:
    """Salted SHA-256; credentials are 256-bit random tokens, so a slow KDF would only cost reconnect storms."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.sha256(f"{salt}:{credential}".encode()).hexdigest()
    return f"sha256${salt}${digest}"


def credential_matches(credential: str, stored: str) -> bool:
    try:
        scheme, salt, _ = stored.split("$", 2)
    except ValueError:
        return False
    return scheme == "sha256" and hmac.compare_digest(hash_credential(credential, salt), stored)


@dataclass(frozen=True)
class Enrollment:
    appliance: Appliance
    #: the bearer credential of a credential hello; empty unless the OMA allows those
    credential: str
    #: the one-time join token (empty on an OMA without a CA: --insecure) and when it expires
    join_token: str
    join_token_expires_at: datetime | None


@dataclass(frozen=True)
class AppliancePage:
    appliances: list[Appliance]
    next_page_token: str


@dataclass
class ApplianceService:
    db: Database
    # Called with the appliance id after a revocation is committed (the session hub closes its stream).
    on_revoked: list[Callable[[str], None]] = field(default_factory=list)
    #: awaited with the appliance id after a revocation is committed, before RevokeAppliance answers (the data path
    #: stops taking its certificates)
    after_revoke: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    #: whether a hello may prove an appliance with its enrollment credential instead of a certificate (deprecated:
    #: a bearer secret; on only with --allow-credential-hello or --insecure)
    credential_hellos: bool = False
    #: whether enrollments make join tokens (the OMA has a CA: not --insecure), and how long one is good
    join_tokens: bool = True
    join_token_ttl: timedelta = timedelta(hours=24)

    async def enroll(self, name: str) -> Enrollment:
        name = name.strip()
        if not _NAME_RE.match(name):
            raise InvalidArgument(
                f"appliance name {name!r} is invalid: use 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                reason="APPLIANCE_NAME_INVALID",
                name=name,
            )
        credential = secrets.token_urlsafe(32) if self.credential_hellos else ""
        join_token = new_join_token() if self.join_tokens else ""
        expires = utcnow() + self.join_token_ttl if join_token else None

        def create() -> Appliance:
            if Appliance.get_or_none(Appliance.name == name) is not None:
                raise AlreadyExists(
                    f"an appliance named {name!r} is already enrolled; pick another name or revoke it first",
                    reason="APPLIANCE_EXISTS",
                    name=name,
                )
            try:
                return Appliance.create(
                    name=name,
                    credential_hash=hash_credential(credential) if credential else "",
                    join_token_hash=hash_join_token(join_token) if join_token else "",
                    join_token_expires_at=expires,
                )
            except pw.IntegrityError as exc:
                raise AlreadyExists(f"an appliance named {name!r} is already enrolled", name=name) from exc

        appliance = await self.db.tx(create)
        return Enrollment(appliance, credential, join_token, expires)

    async def get(self, appliance_id: str) -> Appliance:
        if not appliance_id:
            raise InvalidArgument("appliance id is required", reason="APPLIANCE_ID_MISSING")
        appliance = await self.db.run(Appliance.get_or_none, Appliance.id == appliance_id)
        if appliance is None:
            raise NotFound(
                f"appliance {appliance_id} does not exist; list appliances with ListAppliances",
                reason="APPLIANCE_NOT_FOUND",
                appliance_id=appliance_id,
            )
        return appliance

    async def list(self, page_size: int, page_token: str, connection_state: str | None) -> AppliancePage:
        q = Appliance.select().order_by(Appliance.created_at, Appliance.id)
        if connection_state:
            q = q.where(Appliance.connection_state == connection_state)
        return AppliancePage(*await self.db.run(fetch_page, q, page_size, page_token))

    async def revoke(self, appliance_id: str) -> Appliance:
        await self.get(appliance_id)

        def revoke() -> Appliance:
            Appliance.update(status="revoked").where(Appliance.id == appliance_id).execute()
            ApplianceCertificate.update(revoked_at=utcnow()).where(
                (ApplianceCertificate.appliance == appliance_id) & ApplianceCertificate.revoked_at.is_null()
            ).execute()
            return Appliance.get_by_id(appliance_id)

        revoked = await self.db.tx(revoke)
        for callback in self.on_revoked:
            callback(appliance_id)
        for hook in self.after_revoke:
            await finish(hook(appliance_id))  # a caller gone away leaves no half-restarted data path
        return revoked

    async def authenticate(self, appliance_id: str, credential: str) -> Appliance:
        """The appliance a credential hello names, if such hellos are allowed, its credential is right and it is not
        revoked; UNAUTHENTICATED otherwise."""
        if not self.credential_hellos:
            raise Unauthenticated(
                "this OMA takes appliances by their client certificate on its appliance port (mutual TLS), not by a "
                "credential: join the appliance with `vma-agent enroll` and its join token, then connect there",
                reason="CERTIFICATE_REQUIRED",
            )
        appliance = await self.db.run(Appliance.get_or_none, Appliance.id == appliance_id) if appliance_id else None
        # One message for unknown id and wrong secret: do not tell a caller which appliance ids exist.
        if appliance is None or not credential or not credential_matches(credential, appliance.credential_hash):
            raise Unauthenticated(
                "appliance id or credential is wrong; re-enroll the appliance to get a new credential",
                reason="BAD_CREDENTIAL",
            )
        if appliance.status == "revoked":
            raise Unauthenticated(
                f"appliance {appliance_id} was revoked; enroll it again to reconnect",
                reason="APPLIANCE_REVOKED",
                appliance_id=appliance_id,
            )
        return appliance
