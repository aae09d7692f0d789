"""The OMA's own certificate authority, made with `cryptography` (X.509 from a kept library, no hand-made ASN.1).

At first start the CA and the gRPC server certificate are created in `<data dir>/tls/` (directory 0700, keys 0600,
certificates 0644). The server certificate names every address a client may dial (`--listen`'s host,
`--advertise-address`, and `localhost`/`127.0.0.1` for a loopback or wildcard listener); it is made again when those
names change, when it nears its expiry, or when it was not signed by this CA. The CA itself is never replaced
silently: a `ca.crt` without its `ca.key` (or the other way round) stops the start, because a new CA would cut off
every client that trusts the old one.

Keys are ECDSA P-256: as strong as RSA-3072, made in a millisecond (a test suite makes hundreds of CAs), and spoken
by grpc (BoringSSL), GnuTLS (nbdkit, libnbd) and Go (grpcurl).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from loguru import logger

from oma_server.errors import InvalidArgument
from vma_client_stubs.secret_files import write_atomic, write_private

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=365)
SERVER_RENEW_BEFORE = timedelta(days=30)
CLOCK_SKEW = timedelta(minutes=5)  # not-before slack for a peer whose clock is a little behind ours
# An ECDSA leaf signs the handshake and nothing else.
_SIGNING_ONLY = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
#: the URI subject alternative name that binds an appliance's client certificate to its appliance id
APPLIANCE_URI_PREFIX = "urn:oma:appliance:"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_WILDCARD = ("0.0.0.0", "::", "")


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's DER (what `openssl x509 -fingerprint -sha256` shows, without colons)."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def host_of(address: str) -> str:
    """The host of `HOST`, `HOST:PORT` or `[V6]:PORT`."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address  # a bare host or a bare IPv6 address


def server_names(listen: str, advertise: tuple[str, ...] | list[str]) -> list[str]:
    """The names a server certificate must carry for a listener on `listen` that clients reach as `advertise`."""
    listen_host = host_of(listen)
    names = [socket.gethostname(), socket.getfqdn()] if listen_host in _WILDCARD else [listen_host]
    names += [host_of(a) for a in advertise]
    if listen_host in _WILDCARD or listen_host in _LOOPBACK:
        names += ["localhost", "127.0.0.1"]
    return list(dict.fromkeys(n for n in names if n))


def _subject(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OMA"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def alt_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*sans.get_values_for_type(x509.DNSName), *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]


def appliance_id_of(cert: x509.Certificate) -> str:
    """The appliance id a client certificate is bound to (its `urn:oma:appliance:` URI), empty when none."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    ids = [u[len(APPLIANCE_URI_PREFIX) :] for u in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    ids = [i for i in ids if _plausible_id(i)]
    return ids[0] if len(ids) == 1 else ""


def _plausible_id(appliance_id: str) -> bool:
    return 0 < len(appliance_id) <= 64 and all(c.isalnum() or c in "-_" for c in appliance_id)


def public_key_sha256(key: CertificatePublicKeyTypes) -> str:
    """SHA-256 (hex) of a public key's SubjectPublicKeyInfo: the same key, whichever CSR or certificate carries it."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def checked_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """A CSR signed by its own key (proof of possession), of a key as strong as ours; InvalidArgument otherwise."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise InvalidArgument(
            f"csr_pem is not a PEM certificate signing request ({exc})", reason="CSR_INVALID"
        ) from exc
    if not csr.is_signature_valid:
        raise InvalidArgument("the CSR's signature does not verify with its own key", reason="CSR_INVALID")
    key = csr.public_key()
    strong = (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1")) or (
        isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    )
    if not strong:
        raise InvalidArgument(
            "the CSR's key must be ECDSA P-256 or P-384, or RSA of 2048 bits or more", reason="CSR_INVALID"
        )
    return csr


@dataclass(frozen=True)
class ServerCredentials:
    """What a TLS listener presents: its private key and its chain (leaf first, then the CA)."""

    key_pem: bytes
    chain_pem: bytes


class CertificateAuthority:
    """The CA in `directory` (`ca.crt`, `ca.key`): loaded, or created when neither file exists."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if cert_path.exists() != key_path.exists():
            present, missing = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
            raise InvalidArgument(
                f"{present} exists but {missing} does not: the OMA's CA is incomplete. Restore {missing.name} from a "
                f"backup, or move {directory} away to make a new CA (every enrolled appliance must then enroll again)"
            )
        self.created = not cert_path.exists()
        if self.created:
            self._create(cert_path, key_path)
        else:
            self._load(cert_path, key_path)

    def _create(self, cert_path: Path, key_path: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.key = new_key()
        now = datetime.now(UTC)
        name = _subject(f"OMA CA {os.urandom(4).hex()}")  # unique: two OMAs' CAs never share a subject
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        write_private(key_path, key_pem(self.key))
        write_atomic(cert_path, cert_pem(self.cert))
        logger.info("created the OMA's CA in {dir} (fingerprint {fp})", dir=self.directory, fp=self.fingerprint)

    def _load(self, cert_path: Path, key_path: Path) -> None:
        if key_path.stat().st_mode & 0o077:
            logger.warning("{key} was readable by others; made it 0600", key=key_path)
            os.chmod(key_path, 0o600)
        try:
            self.cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise InvalidArgument(f"the OMA's CA in {self.directory} cannot be read ({exc})") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != self.cert.public_key():
            raise InvalidArgument(f"{key_path} is not the EC key of {cert_path}; restore the pair from a backup")
        self.key = key

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT_FILE

    def signed_by_me(self, cert: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def issue_client_certificate(
        self, public_key: CertificatePublicKeyTypes, appliance_id: str, lifetime: timedelta, uri: str = ""
    ) -> x509.Certificate:
        """A client certificate for `public_key`, bound to `appliance_id` (URI SAN and common name); `uri` names an
        internal client instead (the OMA's own NBD probe)."""
        uri = uri or APPLIANCE_URI_PREFIX + appliance_id
        subject = f"appliance {appliance_id}" if appliance_id else uri
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        return self._leaf(public_key, subject, lifetime, ExtendedKeyUsageOID.CLIENT_AUTH, sans)

    def _leaf(
        self,
        public_key: CertificatePublicKeyTypes,
        subject: str,
        lifetime: timedelta,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
    ) -> x509.Certificate:
        """A leaf this CA signs: for handshakes only (`usage`: server or client auth), valid for `sans`."""
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(_subject(subject))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_SIGNING_ONLY, critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def server_credentials(self, name: str, names: list[str]) -> ServerCredentials:
        """`<name>.crt` (leaf + CA) and `<name>.key` for a listener dialled by `names`: kept while they carry exactly
        those names, were signed by this CA and are not near their expiry; made again otherwise."""
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if cert_path.exists() and key_path.exists():
            leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
            fresh = leaf.not_valid_after_utc - SERVER_RENEW_BEFORE > datetime.now(UTC)
            if fresh and set(alt_names(leaf)) == set(names) and self.signed_by_me(leaf):
                return ServerCredentials(key_path.read_bytes(), cert_path.read_bytes())
        key = new_key()
        subject = names[0] if names else "oma"
        leaf = self._leaf(
            key.public_key(), subject, SERVER_LIFETIME, ExtendedKeyUsageOID.SERVER_AUTH, _general_names(names)
        )
        chain = cert_pem(leaf) + self.pem
        write_private(key_path, key_pem(key))
        write_atomic(cert_path, chain)
        logger.info("made the {name} certificate for {names}", name=name, names=", ".join(names))
        return ServerCredentials(key_pem(key), chain)
