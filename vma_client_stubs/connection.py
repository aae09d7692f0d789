"""How a client reaches an OMA: TLS verified against the OMA's CA (or the system's roots for a certificate an
operator brought from a public CA), plaintext only for a server started with `--insecure`.

    channel = aio_channel(Endpoint("oma.example:50051", ca_pem=Path("ca.crt").read_bytes()))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

Options = Sequence[tuple[str, Any]]


class ConnectionSettingsError(Exception):
    """The client's own TLS settings cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class Endpoint:
    """An OMA to call: its address, and how its port is secured."""

    target: str
    #: the CA to verify the OMA's certificate against; None: the system's trusted roots
    ca_pem: bytes | None = None
    #: plaintext (a server started with --insecure): nothing is verified or encrypted
    insecure: bool = False

    @classmethod
    def from_ca_file(cls, target: str, ca: Path | None, *, insecure: bool = False) -> Endpoint:
        """An endpoint whose CA is read from `ca` (as `--ca`/`OMA_CA` name it)."""
        if insecure:
            return cls(target, insecure=True)
        if ca is None:
            return cls(target)
        try:
            ca_pem = ca.read_bytes()
        except OSError as exc:
            raise ConnectionSettingsError(f"cannot read the CA file {ca}: {exc.strerror}") from exc
        if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise ConnectionSettingsError(f"{ca} holds no PEM certificate; give the OMA's ca.crt")
        return cls(target, ca_pem)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials of this endpoint (None: plaintext)."""
        if self.insecure:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem)


def aio_channel(endpoint: Endpoint, options: Options | None = None) -> grpc.aio.Channel:
    credentials = endpoint.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(endpoint.target, options=options)
    return grpc.aio.secure_channel(endpoint.target, credentials, options=options)


def sync_channel(endpoint: Endpoint, options: Options | None = None) -> grpc.Channel:
    credentials = endpoint.credentials()
    if credentials is None:
        return grpc.insecure_channel(endpoint.target, options=options)
    return grpc.secure_channel(endpoint.target, credentials, options=options)


def tls_failure(details: str) -> bool:
    """Whether an UNAVAILABLE call's details say the TLS handshake failed (a wrong CA, or TLS against plaintext)."""
    text = details.lower()
    return any(word in text for word in ("ssl", "handshake", "certificate", "tls"))
