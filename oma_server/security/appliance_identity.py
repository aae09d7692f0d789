"""Appliance identity by certificate: the one-time join token of an enrollment, traded with a CSR for a client
certificate of the OMA's CA; its renewal; and the check of that certificate at every hello on the appliance port.

Like a TLS bootstrap (kubeadm's token + CA hash): the operator hands the appliance a join token and the CA's
fingerprint; the appliance makes its own key (it never leaves the appliance), verifies the OMA against that
fingerprint, and sends a CSR with the token. The certificate names the appliance in a URI SAN
(`urn:oma:appliance:<id>`), so the OMA takes the identity from the certificate, never from the message. Every
certificate issued is recorded by serial: a hello checks the serial against the record, so a revocation (of the
appliance, hence its certificates) holds at the next hello and ends a live stream at once.

No grpc here: the gateway hands in the peer's PEM from the TLS handshake.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from loguru import logger

from oma_server.clock import Clock
from oma_server.db.database import Database
from oma_server.db.models import Appliance, ApplianceCertificate
from oma_server.errors import FailedPrecondition, Unauthenticated
from oma_server.security.ca import (
    CertificateAuthority,
    appliance_id_of,
    cert_pem,
    checked_csr,
    public_key_sha256,
)

JOIN_TOKEN_PREFIX = "oma-join_"


def new_join_token() -> str:
    return JOIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_join_token(token: str) -> str:
    """SHA-256 (hex) of a join token: a 256-bit random secret needs no salt or slow KDF."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedCertificate:
    appliance: Appliance
    certificate_pem: str
    expires_at: datetime  # naive UTC, as the database keeps it


def _naive(moment: datetime) -> datetime:
    """An aware moment as the database keeps it: naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _refused(message: str, reason: str, appliance_id: str | None = None) -> Unauthenticated:
    return Unauthenticated(message, reason=reason, appliance_id=appliance_id)


def _newest_for_key(
    appliance_id: str, key_hash: str, good_after: datetime | None = None
) -> ApplianceCertificate | None:
    """The newest unrevoked certificate issued to the appliance for this key (valid past `good_after`, if given)."""
    where = (
        (ApplianceCertificate.appliance == appliance_id)
        & (ApplianceCertificate.public_key_sha256 == key_hash)
        & ApplianceCertificate.revoked_at.is_null()
    )
    if good_after is not None:
        where &= ApplianceCertificate.not_after > good_after
    return ApplianceCertificate.select().where(where).order_by(ApplianceCertificate.issued_at.desc()).first()


@dataclass
class ApplianceCertificates:
    """Issues and checks appliance client certificates. `ca` is None on an OMA started with --insecure (plaintext:
    there is no certificate to check there, and no appliance port)."""

    db: Database
    clock: Clock
    ca: CertificateAuthority | None
    lifetime: timedelta
    #: the HOST:PORT appliances dial with their certificate (the appliance listener's, once it is bound)
    endpoint: Callable[[], str]

    def _authority(self) -> CertificateAuthority:
        if self.ca is None:
            raise FailedPrecondition(
                "this OMA runs with --insecure and has no CA to issue appliance certificates; start it without "
                "--insecure, or connect the appliance with its credential",
                reason="APPLIANCE_CA_MISSING",
            )
        return self.ca

    def _issue(self, appliance: Appliance, csr_pem: str) -> tuple[ApplianceCertificate, bool]:
        """The certificate for the CSR's key: the one already issued to this appliance for that key and still good (a
        retry), or a new one. Runs inside the caller's transaction."""
        ca = self._authority()
        csr = checked_csr(csr_pem)
        key_hash = public_key_sha256(csr.public_key())
        now = self.clock.now()
        earlier = _newest_for_key(appliance.id, key_hash, good_after=now + self.lifetime / 2)
        if earlier is not None:
            return earlier, False
        cert = ca.issue_client_certificate(csr.public_key(), appliance.id, self.lifetime)
        row = ApplianceCertificate.create(
            serial=_serial(cert),
            appliance=appliance.id,
            public_key_sha256=key_hash,
            certificate_pem=cert_pem(cert).decode(),
            not_after=_naive(cert.not_valid_after_utc),
            issued_at=now,
        )
        Appliance.update(certificate_serial=row.serial, certificate_expires_at=row.not_after).where(
            Appliance.id == appliance.id
        ).execute()
        logger.bind(appliance_id=appliance.id).info(
            "issued client certificate {serial} to appliance {name}, valid until {until:%Y-%m-%d %H:%M} UTC",
            serial=row.serial,
            name=appliance.name,
            until=row.not_after,
        )
        return row, True

    async def join(self, join_token: str, csr_pem: str) -> IssuedCertificate:
        """The client certificate for a join token and a CSR; the token is spent by the first join."""
        self._authority()
        digest = hash_join_token(join_token) if join_token.startswith(JOIN_TOKEN_PREFIX) else ""
        now = self.clock.now()

        def join() -> IssuedCertificate:
            appliance = Appliance.get_or_none(Appliance.join_token_hash == digest) if digest else None
            if appliance is None:
                raise _refused(
                    "the join token is not one this OMA issued; ask an admin for a new one (omactl appliances enroll)",
                    "JOIN_TOKEN_INVALID",
                )
            if appliance.status == "revoked":
                raise _refused(f"appliance {appliance.id} was revoked; enroll it again", "APPLIANCE_REVOKED")
            expires = appliance.join_token_expires_at
            if appliance.joined_at is None and expires is not None and expires <= now:
                raise _refused(
                    f"the join token of appliance {appliance.name!r} expired at {expires:%Y-%m-%d %H:%M} UTC; enroll "
                    "the appliance again under a new name, or revoke it first",
                    "JOIN_TOKEN_EXPIRED",
                    appliance_id=appliance.id,
                )
            if appliance.joined_at is not None:
                # Spent; only a retry of that same join (the same key: an answer lost on the way) gets an answer.
                key_hash = public_key_sha256(checked_csr(csr_pem).public_key())
                first = _newest_for_key(appliance.id, key_hash)
                if first is None:
                    raise _refused(
                        f"the join token of appliance {appliance.name!r} was used already; a join token is good once",
                        "JOIN_TOKEN_USED",
                        appliance_id=appliance.id,
                    )
                return IssuedCertificate(appliance, first.certificate_pem, first.not_after)
            row, _ = self._issue(appliance, csr_pem)
            Appliance.update(joined_at=row.issued_at).where(Appliance.id == appliance.id).execute()
            return IssuedCertificate(Appliance.get_by_id(appliance.id), row.certificate_pem, row.not_after)

        return await self.db.tx(join)

    async def renew(self, peer_certificate_pem: bytes | None, csr_pem: str) -> IssuedCertificate:
        """A new certificate for the appliance whose current, valid certificate made this call."""
        appliance, _ = await self.authenticate(peer_certificate_pem, "")

        def renew() -> IssuedCertificate:
            row, _ = self._issue(appliance, csr_pem)
            return IssuedCertificate(appliance, row.certificate_pem, row.not_after)

        return await self.db.tx(renew)

    async def revoked(self) -> list[tuple[str, datetime]]:
        """Every revoked certificate: (hex serial, when), for the data path's CRL."""

        def query() -> list[tuple[str, datetime]]:
            rows = ApplianceCertificate.select().where(ApplianceCertificate.revoked_at.is_null(False))
            return [(r.serial, r.revoked_at) for r in rows if r.revoked_at is not None]

        return await self.db.run(query)

    async def authenticate(self, peer_certificate_pem: bytes | None, named_id: str) -> tuple[Appliance, str]:
        """The appliance a verified peer certificate names, and the certificate's serial, if the OMA issued it and
        neither it nor the appliance is revoked; UNAUTHENTICATED otherwise. `named_id` (the hello's appliance id)
        must be empty or that appliance."""
        if not peer_certificate_pem:
            raise _refused(
                "no client certificate: appliances connect to the appliance port with the certificate of their join "
                "(vma-agent enroll)",
                "CERTIFICATE_MISSING",
            )
        ca = self._authority()
        cert = x509.load_pem_x509_certificate(peer_certificate_pem)
        appliance_id = appliance_id_of(cert)
        serial = _serial(cert)
        row = await self.db.run(ApplianceCertificate.get_or_none, ApplianceCertificate.serial == serial)
        # The handshake verified the chain; a certificate this OMA never recorded (another OMA's CA sharing ours
        # would be one) is refused all the same.
        if not appliance_id or row is None or row.appliance_id != appliance_id or not ca.signed_by_me(cert):
            raise _refused(
                "this client certificate was not issued to an appliance by this OMA; join again with a new join token",
                "CERTIFICATE_UNKNOWN",
            )
        if named_id and named_id != appliance_id:
            raise _refused(
                f"the Hello names appliance {named_id} but the certificate is appliance {appliance_id}'s; an appliance "
                "speaks only for itself",
                "APPLIANCE_ID_MISMATCH",
                appliance_id=appliance_id,
            )
        appliance = await self.db.run(Appliance.get_by_id, appliance_id)
        if appliance.status == "revoked":
            raise _refused(
                f"appliance {appliance_id} was revoked; enroll it again to reconnect",
                "APPLIANCE_REVOKED",
                appliance_id=appliance_id,
            )
        if row.superseded_by:
            raise _refused(
                f"certificate {serial} of appliance {appliance_id} was superseded by its renewal {row.superseded_by}; "
                "connect with the renewed certificate (the identity directory holds it), or join again",
                "CERTIFICATE_SUPERSEDED",
                appliance_id=appliance_id,
            )
        if row.revoked_at is not None:
            raise _refused(
                f"certificate {serial} of appliance {appliance_id} was revoked; join again with a new join token",
                "CERTIFICATE_REVOKED",
                appliance_id=appliance_id,
            )
        if row.not_after <= self.clock.now():
            raise _refused(
                f"certificate {serial} of appliance {appliance_id} expired; renew before expiry, or join again",
                "CERTIFICATE_EXPIRED",
                appliance_id=appliance_id,
            )
        await self.db.tx(self._supersede, row)
        return appliance, serial

    def _supersede(self, current: ApplianceCertificate) -> list[str]:
        """Revoke every unrevoked certificate issued to the appliance before `current`, whose use (a completed
        handshake) proves the appliance holds its key: a renewal's predecessor then opens nothing. Returns their
        serials. Certificates issued at the very same moment are left alone (no order between them)."""
        older = ApplianceCertificate.select(ApplianceCertificate.serial).where(
            (ApplianceCertificate.appliance == current.appliance_id)
            & ApplianceCertificate.revoked_at.is_null()
            & (ApplianceCertificate.issued_at < current.issued_at)
        )
        serials = [r.serial for r in older]
        if serials:
            ApplianceCertificate.update(revoked_at=self.clock.now(), superseded_by=current.serial).where(
                ApplianceCertificate.serial.in_(serials)
            ).execute()
            logger.bind(appliance_id=current.appliance_id).info(
                "certificate {serial} of the appliance is in use: revoked its predecessor(s) {old} as superseded",
                serial=current.serial,
                old=", ".join(serials),
            )
        return serials

    async def confirm(self, peer_certificate_pem: bytes | None) -> tuple[str, list[str]]:
        """The appliance holds the certificate of this call: its serial, and those this revoked as superseded."""
        appliance, serial = await self.authenticate(peer_certificate_pem, "")
        row = await self.db.run(ApplianceCertificate.get_by_id, serial)

        def superseded() -> list[str]:
            query = ApplianceCertificate.select(ApplianceCertificate.serial).where(
                (ApplianceCertificate.appliance == appliance.id) & (ApplianceCertificate.superseded_by == row.serial)
            )
            return sorted(r.serial for r in query)

        return serial, await self.db.run(superseded)
