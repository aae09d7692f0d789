"""`HOST:PORT` addresses of listeners (gRPC, NBD, HTTP, the simulator): one parser, one kind of error."""

from __future__ import annotations

from oma_server.errors import InvalidArgument

_NOT_IN_HOST = set("\n\r\0[]=#\\ ")


def parse_host_port(
    value: str, what: str, *, reason: str = "LISTEN_ADDRESS_INVALID", port_zero: bool = True
) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') into its parts; InvalidArgument naming `what` otherwise. Port 0 (any
    free port) only where `port_zero`; a host with spaces, brackets or control characters never (it ends up in
    command lines and URIs)."""
    host, sep, port_text = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    lowest = 0 if port_zero else 1
    if not sep or not host or not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise InvalidArgument(
            f"{what} {value!r} is not HOST:PORT with a port in {lowest}..65535 (for example 127.0.0.1:50051)",
            reason=reason,
        )
    if _NOT_IN_HOST & set(host):
        raise InvalidArgument(f"{what} {value!r}: the host part has characters no address has", reason=reason)
    return host, int(port_text)
