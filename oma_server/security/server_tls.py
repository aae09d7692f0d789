"""What the OMA's gRPC port presents, from the settings: a certificate of its own CA (made at first start), or the
certificate and key an operator brings (`--tls-cert`, `--tls-key`). No grpc here: `server.py` turns this into
grpc server credentials."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from oma_server.errors import InvalidArgument
from oma_server.security.ca import (
    CertificateAuthority,
    ServerCredentials,
    alt_names,
    fingerprint,
    host_of,
    server_names,
)
from oma_server.settings import Settings


@dataclass(frozen=True)
class ServerTls:
    """The gRPC port's key and chain, and what a client verifies it against."""

    credentials: ServerCredentials
    #: the CA at the root of the chain, as a client should be given it (None: an operator's certificate whose
    #: chain file does not carry its root; clients use the operator's CA file)
    ca_pem: bytes | None
    #: where that CA is on disk, to tell operators (`grpcurl -cacert`, `omactl --ca`)
    ca_path: Path | None
    names: list[str]

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint(x509.load_pem_x509_certificate(self.ca_pem)) if self.ca_pem else ""

    @classmethod
    def load(cls, settings: Settings, ca: CertificateAuthority) -> ServerTls:
        if settings.tls_cert is not None and settings.tls_key is not None:
            return _operator_brought(settings.tls_cert, settings.tls_key)
        names = server_names(settings.listen, settings.advertise_addresses)
        return cls(ca.server_credentials("server", names), ca.pem, ca.cert_path, names)

    @classmethod
    def for_appliances(cls, settings: Settings, ca: CertificateAuthority) -> ServerTls:
        """The appliance port's: always a certificate of the OMA's own CA, whose fingerprint appliances pin (also
        when the operator port serves an operator's --tls-cert)."""
        advertised = [*settings.advertise_addresses, *filter(None, [settings.appliance_advertise])]
        names = server_names(settings.appliance_listen, advertised)
        return cls(ca.server_credentials("appliance-server", names), ca.pem, ca.cert_path, names)


def appliance_endpoint(settings: Settings, port: int) -> str:
    """The HOST:PORT appliances are told to dial: --appliance-advertise, else `dial_endpoint` of its listener."""
    if settings.appliance_advertise:
        return settings.appliance_advertise
    return dial_endpoint(settings.appliance_listen, settings.advertise_addresses, port)


def dial_endpoint(listen: str, advertise_addresses: tuple[str, ...], port: int) -> str:
    """The HOST:PORT a client dials for a listener on `listen` bound to `port`: the listener's host, or for a
    wildcard listener the first --advertise-address's host, else this host's name (names the certificate carries)."""
    host = host_of(listen)
    if host in ("0.0.0.0", "::", ""):
        host = host_of(advertise_addresses[0]) if advertise_addresses else socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _operator_brought(cert_path: Path, key_path: Path) -> ServerTls:
    try:
        chain_pem = cert_path.read_bytes()
        chain = x509.load_pem_x509_certificates(chain_pem)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"--tls-cert {cert_path} holds no PEM certificate ({exc})") from exc
    try:
        key_bytes = key_path.read_bytes()
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"--tls-key {key_path} holds no unencrypted PEM private key ({exc})") from exc
    if key.public_key() != chain[0].public_key():
        raise InvalidArgument(f"--tls-key {key_path} is not the key of the first certificate in {cert_path}")
    root = chain[-1]
    self_signed = len(chain) > 1 and root.issuer == root.subject
    names = alt_names(chain[0])
    return ServerTls(
        ServerCredentials(key_bytes, chain_pem),
        root.public_bytes(serialization.Encoding.PEM) if self_signed else None,
        None,
        names,
    )
