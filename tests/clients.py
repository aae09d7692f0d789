"""How tests reach an OMA the way real clients do: TLS verified against the server's own CA (made at its first
start in `<data dir>/tls/`), plaintext only for a server a test started with `insecure=True`, and the initial admin
token that first start wrote (`<data dir>/admin.token`)."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oma_server.security.tokens import read_admin_token
from oma_server.server import OmaServer
from vma_client_stubs.connection import Endpoint, Options, aio_channel, sync_channel


def ca_file(data_dir: Path) -> Path:
    """The CA an `oma-server --data-dir data_dir` made at its first start."""
    return data_dir / "tls" / "ca.crt"


def endpoint(server: OmaServer) -> Endpoint:
    """The in-process server, as a client dials it."""
    return server.local_endpoint()


def oma_channel(server: OmaServer, options: Options | None = None) -> grpc.aio.Channel:
    return aio_channel(endpoint(server), options)


def process_endpoint(data_dir: Path, address: str) -> Endpoint:
    """An `oma-server` process serving TLS with the CA of its data dir, called with its initial admin token."""
    return Endpoint(address, ca_file(data_dir).read_bytes(), token=read_admin_token(data_dir))


def process_channel(data_dir: Path, address: str, options: Options | None = None) -> grpc.aio.Channel:
    return aio_channel(process_endpoint(data_dir, address), options)


def process_sync_channel(data_dir: Path, address: str, options: Options | None = None) -> grpc.Channel:
    return sync_channel(process_endpoint(data_dir, address), options)


def process_serving(data_dir: Path, address: str, timeout: float = 2.0) -> bool:
    """Whether the `oma-server` process at `address` answers SERVING over TLS (False while it has not made its CA
    yet, or does not answer)."""
    if not ca_file(data_dir).exists():
        return False
    with process_sync_channel(data_dir, address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def nbd_client_certificates(data_dir: Path, into: Path) -> Path:
    """A libnbd `tls-certificates` directory (ca-cert.pem, client-cert.pem, client-key.pem) holding the client
    certificate the OMA of `data_dir` made for its own NBD probe: a client its nbdkit lets in."""
    nbd = data_dir / "nbd"
    into.mkdir(parents=True, exist_ok=True)
    (into / "ca-cert.pem").write_bytes((nbd / "tls" / "ca-cert.pem").read_bytes())
    (into / "client-cert.pem").write_bytes((nbd / "probe" / "probe.crt").read_bytes())
    key = into / "client-key.pem"
    key.write_bytes((nbd / "probe" / "probe.key").read_bytes())
    key.chmod(0o600)
    return into
