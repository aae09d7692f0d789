"""How a client reaches an OMA: TLS verified against the OMA's CA (or the system's roots for a certificate an
operator brought from a public CA), plaintext only for a server started with `--insecure`, and an operator's API
token on every call.

    channel = aio_channel(Endpoint("oma.example:50051", ca_pem=Path("ca.crt").read_bytes(), token=token))

The token travels as `authorization: Bearer <token>` metadata put on by a client interceptor, the same on TLS and
plaintext (grpc's call credentials refuse a plaintext channel; a token over plaintext is the operator's choice of
--insecure).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

Options = Sequence[tuple[str, Any]]
#: an operator token, or a function asked for it at every call (a token that rotates)
TokenSource = str | Callable[[], str]


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
    #: the operator's API token ("" for none: health, reflection, an appliance's stream)
    token: str = ""

    @classmethod
    def from_ca_file(cls, target: str, ca: Path | None, *, insecure: bool = False, token: str = "") -> Endpoint:
        """An endpoint whose CA is read from `ca` (as `--ca`/`OMA_CA` name it)."""
        if insecure:
            return cls(target, insecure=True, token=token)
        if ca is None:
            return cls(target, token=token)
        try:
            ca_pem = ca.read_bytes()
        except OSError as exc:
            raise ConnectionSettingsError(f"cannot read the CA file {ca}: {exc.strerror}") from exc
        if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise ConnectionSettingsError(f"{ca} holds no PEM certificate; give the OMA's ca.crt")
        return cls(target, ca_pem, token=token)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials of this endpoint (None: plaintext)."""
        if self.insecure:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem)


def _bearer(token: TokenSource) -> tuple[str, str]:
    return ("authorization", f"Bearer {token() if callable(token) else token}")


class _AioBearer:
    def __init__(self, token: TokenSource) -> None:
        self.token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        key, value = _bearer(self.token)
        metadata[key] = value
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _AioBearerUnaryUnary(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _AioBearerUnaryStream(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _AioBearerStreamUnary(_AioBearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), requests)


class _AioBearerStreamStream(_AioBearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), requests)


def bearer_interceptors(token: TokenSource) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that put `authorization: Bearer <token>` on every call of an asyncio channel. One per kind of
    call: grpc.aio files an interceptor under the first kind it implements only, so one object implementing all
    four would reach unary calls alone."""
    kinds = (_AioBearerUnaryUnary, _AioBearerUnaryStream, _AioBearerStreamUnary, _AioBearerStreamStream)
    return [kind(token) for kind in kinds]


class _SyncBearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """The same for a synchronous channel (omactl)."""

    def __init__(self, token: TokenSource) -> None:
        self.token = token

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), _bearer(self.token)])

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), requests)


def aio_channel(endpoint: Endpoint, options: Options | None = None) -> grpc.aio.Channel:
    credentials = endpoint.credentials()
    interceptors = bearer_interceptors(endpoint.token) if endpoint.token else None
    if credentials is None:
        return grpc.aio.insecure_channel(endpoint.target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(endpoint.target, credentials, options=options, interceptors=interceptors)


def sync_channel(endpoint: Endpoint, options: Options | None = None) -> grpc.Channel:
    credentials = endpoint.credentials()
    if credentials is None:
        channel = grpc.insecure_channel(endpoint.target, options=options)
    else:
        channel = grpc.secure_channel(endpoint.target, credentials, options=options)
    return grpc.intercept_channel(channel, _SyncBearerToken(endpoint.token)) if endpoint.token else channel


def tls_failure(details: str) -> bool:
    """Whether an UNAVAILABLE call's details say the TLS handshake failed (a wrong CA, or TLS against plaintext)."""
    text = details.lower()
    return any(word in text for word in ("ssl", "handshake", "certificate", "tls"))
