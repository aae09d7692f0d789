"""An appliance's own identity: its key (made here, never sent anywhere), its client certificate from the OMA's
CA, and the CA — made by joining with a one-time join token, kept in a directory, renewed before it expires.

    ticket = JoinTicket.load(Path("vma-01.join"))            # what `omactl appliances enroll --join-file` wrote
    identity = await join(ticket)                            # verifies the OMA against the ticket's CA fingerprint
    identity.save(Path("/var/lib/vma/identity"))             # key 0600
    renewer = CertificateRenewer(identity, Path("/var/lib/vma/identity"))
    client = StreamClient(identity.appliance_endpoint, identity.appliance_id, "",
                          channel_credentials=renewer.channel_credentials, ...)
    renewer.start()                                          # renews at two thirds of the lifetime, then confirms

**Pinning, like a TLS bootstrap.** The ticket names the OMA's CA by its SHA-256 fingerprint only. Before the join
token leaves this host, `pinned_ca` opens a TLS connection to the OMA's operator port without trusting anything,
takes the certificate chain the server presents, and keeps the certificate whose fingerprint is the ticket's; the
join then runs on a grpc channel verified against that CA (names included), so an impostor in the middle never sees
the token. The chain is read with pyOpenSSL (PyCA's binding of OpenSSL): Python 3.11's `ssl` module shows a peer's
leaf only, and grpc cannot connect without verifying. An OMA whose operator port serves an operator's own
certificate (`--tls-cert` from another CA) does not present its CA there: give that certificate's CA as `trust`;
the CA the join answers with must still have the ticket's fingerprint.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from loguru import logger

from oma.v1 import appliance_identity_pb2, appliance_identity_pb2_grpc
from vma_client_stubs.secret_files import write_atomic, write_private

KEY_FILE = "appliance.key"
CERT_FILE = "appliance.crt"
CA_FILE = "ca.crt"
IDENTITY_FILE = "identity.json"
NBD_DIR = "nbd"  # the certificate for NBD, in libnbd's layout


class IdentityError(Exception):
    """The identity cannot be made, read or used; the message says what to do."""


def fingerprint_of(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of a certificate's DER, as the OMA names its CA."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class JoinTicket:
    """What an operator hands an appliance to join: where the OMA's operator port is, the one-time join token, and
    the fingerprint of the OMA's CA. A secret while unused (the file is 0600)."""

    oma: str
    appliance_id: str
    join_token: str
    ca_fingerprint: str
    expires_at: str = ""

    def save(self, path: Path) -> None:
        write_private(path, (json.dumps(asdict(self), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> JoinTicket:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: str(data[k]) for k in ("oma", "appliance_id", "join_token", "ca_fingerprint")})
        except OSError as exc:
            raise IdentityError(f"cannot read the join file {path}: {exc.strerror}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"{path} is not a join file of `omactl appliances enroll --join-file`") from exc


@dataclass(frozen=True)
class ApplianceIdentity:
    """The appliance's key, certificate and the OMA's CA (PEM), and where it dials the stream."""

    appliance_id: str
    key_pem: bytes
    certificate_pem: bytes
    ca_pem: bytes
    appliance_endpoint: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem)

    def renewal_due(self) -> datetime:
        """When to renew: two thirds into the certificate's lifetime."""
        cert = self.certificate
        return cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) * 2 / 3

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Mutual TLS: the OMA verified against its CA, this appliance by its certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.certificate_pem
        )

    def save(self, directory: Path) -> None:
        """Into `directory` (0700): the key 0600, certificates and `identity.json` 0644; each file whole."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        write_private(directory / KEY_FILE, self.key_pem)
        write_atomic(directory / CERT_FILE, self.certificate_pem)
        write_atomic(directory / CA_FILE, self.ca_pem)
        # The same, in libnbd's tls-certificates layout: the copier's NBD connections (TLS to the OMA's nbdkit).
        nbd = directory / NBD_DIR
        nbd.mkdir(exist_ok=True)
        nbd.chmod(0o700)
        write_atomic(nbd / "ca-cert.pem", self.ca_pem)
        write_atomic(nbd / "client-cert.pem", self.certificate_pem)
        write_private(nbd / "client-key.pem", self.key_pem)
        meta = {"appliance_id": self.appliance_id, "appliance_endpoint": self.appliance_endpoint}
        write_atomic(directory / IDENTITY_FILE, (json.dumps(meta, indent=2) + "\n").encode())

    @classmethod
    def load(cls, directory: Path) -> ApplianceIdentity:
        try:
            meta = json.loads((directory / IDENTITY_FILE).read_text(encoding="utf-8"))
            return cls(
                str(meta["appliance_id"]),
                (directory / KEY_FILE).read_bytes(),
                (directory / CERT_FILE).read_bytes(),
                (directory / CA_FILE).read_bytes(),
                str(meta["appliance_endpoint"]),
            )
        except OSError as exc:
            raise IdentityError(
                f"no appliance identity in {directory} ({exc.strerror}): join first with `vma-agent enroll`"
            ) from exc
        except (ValueError, KeyError) as exc:
            raise IdentityError(f"{directory / IDENTITY_FILE} is damaged; join again with a new join token") from exc


def _csr(key: ec.EllipticCurvePrivateKey, appliance_id: str) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"appliance {appliance_id}")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def presented_chain(target: str, timeout_s: float = 10.0) -> list[x509.Certificate]:
    """The certificates a TLS server at `target` presents, trusting none of them (blocking)."""
    from OpenSSL import SSL  # the chain as sent: see the module's docstring

    host, port = _split(target)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    context.set_alpn_protos([b"h2"])
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.setblocking(False)
        conn = SSL.Connection(context, sock)
        if not host.replace(".", "").isdigit() and ":" not in host:
            conn.set_tlsext_host_name(host.encode())
        conn.set_connect_state()
        while True:
            try:
                conn.do_handshake()
                break
            except (SSL.WantReadError, SSL.WantWriteError):
                left = deadline - time.monotonic()
                if left <= 0 or not any(select.select([sock], [sock], [], left)):
                    raise TimeoutError(f"no TLS handshake with {target} within {timeout_s:g} s") from None
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        conn.shutdown()
    return list(chain)


def pinned_ca(target: str, ca_fingerprint: str, timeout_s: float = 10.0) -> bytes:
    """The PEM of the CA with `ca_fingerprint` among the certificates the OMA at `target` presents."""
    try:
        chain = presented_chain(target, timeout_s)
    except (OSError, TimeoutError) as exc:
        raise IdentityError(f"cannot reach the OMA at {target} for its certificate: {exc}") from exc
    except Exception as exc:  # OpenSSL.SSL.Error: not a TLS port, or a broken handshake
        raise IdentityError(f"no TLS handshake with the OMA at {target}: {exc}") from exc
    for cert in chain:
        if fingerprint_of(cert) == ca_fingerprint.lower():
            return cert.public_bytes(serialization.Encoding.PEM)
    raise IdentityError(
        f"the server at {target} does not present the OMA CA {ca_fingerprint} of the join ticket: it is not that "
        "OMA, or its port serves an operator's certificate (then give that certificate's CA to trust)"
    )


async def join(ticket: JoinTicket, *, trust: bytes | None = None, timeout_s: float = 30.0) -> ApplianceIdentity:
    """Make this appliance's key and trade the ticket's join token and a CSR for its certificate."""
    ca_pem = trust or await asyncio.to_thread(pinned_ca, ticket.oma, ticket.ca_fingerprint, min(timeout_s, 10.0))
    key = ec.generate_private_key(ec.SECP256R1())
    async with grpc.aio.secure_channel(ticket.oma, grpc.ssl_channel_credentials(root_certificates=ca_pem)) as ch:
        stub = appliance_identity_pb2_grpc.ApplianceIdentityServiceStub(ch)
        request = appliance_identity_pb2.JoinApplianceRequest(
            join_token=ticket.join_token, csr_pem=_csr(key, ticket.appliance_id)
        )
        response = await stub.JoinAppliance(request, timeout=timeout_s)
    oma_ca = x509.load_pem_x509_certificate(response.ca_pem.encode())
    if fingerprint_of(oma_ca) != ticket.ca_fingerprint.lower():
        raise IdentityError(
            f"the OMA answered with CA {fingerprint_of(oma_ca)}, not the join ticket's {ticket.ca_fingerprint}"
        )
    return ApplianceIdentity(
        response.appliance.id,
        _key_pem(key),
        response.certificate_pem.encode(),
        response.ca_pem.encode(),
        response.appliance_endpoint,
    )


async def renew(identity: ApplianceIdentity, *, timeout_s: float = 30.0) -> ApplianceIdentity:
    """A new key and certificate, asked for with the current certificate on the appliance port."""
    key = ec.generate_private_key(ec.SECP256R1())
    async with grpc.aio.secure_channel(identity.appliance_endpoint, identity.channel_credentials()) as ch:
        stub = appliance_identity_pb2_grpc.ApplianceIdentityServiceStub(ch)
        request = appliance_identity_pb2.RenewApplianceCertificateRequest(csr_pem=_csr(key, identity.appliance_id))
        response = await stub.RenewApplianceCertificate(request, timeout=timeout_s)
    return ApplianceIdentity(
        identity.appliance_id,
        _key_pem(key),
        response.certificate_pem.encode(),
        identity.ca_pem,
        identity.appliance_endpoint,
    )


async def confirm(identity: ApplianceIdentity, *, timeout_s: float = 30.0) -> list[str]:
    """Tell the OMA the appliance holds `identity`'s certificate (it calls with it): the OMA revokes the ones issued
    before it, and answers their serials (hex)."""
    async with grpc.aio.secure_channel(identity.appliance_endpoint, identity.channel_credentials()) as ch:
        stub = appliance_identity_pb2_grpc.ApplianceIdentityServiceStub(ch)
        request = appliance_identity_pb2.ConfirmApplianceCertificateRequest()
        response = await stub.ConfirmApplianceCertificate(request, timeout=timeout_s)
    return list(response.superseded_serials)


class CertificateRenewer:
    """Keeps an identity's certificate fresh while the appliance runs: renews two thirds into its lifetime (and
    retries every `retry_s` after a failure), saves it to `directory`, and hands the newest credentials to each new
    connection of the stream — the running stream stays up; no restart."""

    def __init__(self, identity: ApplianceIdentity, directory: Path | None, *, retry_s: float = 60.0) -> None:
        self.identity = identity
        self.directory = directory
        self.retry_s = retry_s
        self.renewals = 0
        self._task: asyncio.Task[None] | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return self.identity.channel_credentials()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"vma-renewer-{self.identity.appliance_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def renew_now(self) -> None:
        """Renew, save, then confirm: the OMA revokes the predecessor only once the new certificate is in use, so a
        renewal whose answer was lost (or not saved) leaves the appliance its working certificate. A confirmation
        that fails is not retried here: the next connection of the stream, with the new certificate, does the same."""
        fresh = await renew(self.identity)
        if self.directory is not None:
            fresh.save(self.directory)
        self.identity = fresh
        self.renewals += 1
        log = logger.bind(appliance_id=fresh.appliance_id)
        log.info(
            "renewed the appliance certificate: serial {serial:x}, valid until {until:%Y-%m-%d %H:%M} UTC",
            serial=fresh.certificate.serial_number,
            until=fresh.certificate.not_valid_after_utc,
        )
        try:
            superseded = await confirm(fresh)
        except (grpc.aio.AioRpcError, OSError) as exc:
            log.warning(
                "the OMA did not take the renewed certificate's confirmation ({err}); the stream's next "
                "connection confirms it",
                err=exc,
            )
            return
        log.info("the predecessor(s) {old} of the renewed certificate are revoked", old=", ".join(superseded) or "-")

    async def _run(self) -> None:
        while True:
            wait = (self.identity.renewal_due() - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(0.0, min(wait, timedelta(days=1).total_seconds())))
            if self.identity.renewal_due() > datetime.now(UTC):
                continue
            try:
                await self.renew_now()
            except (grpc.aio.AioRpcError, OSError) as exc:
                logger.warning("certificate renewal failed, retrying in {s:g} s: {err}", s=self.retry_s, err=exc)
                await asyncio.sleep(self.retry_s)
