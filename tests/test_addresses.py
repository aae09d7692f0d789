"""One parser for every listener's HOST:PORT (gRPC, NBD, HTTP, the simulator)."""

from __future__ import annotations

import pytest

from oma_server.addresses import parse_host_port
from oma_server.errors import InvalidArgument


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:7001", ("127.0.0.1", 7001)), ("[::1]:7002", ("::1", 7002)), ("0.0.0.0:0", ("0.0.0.0", 0))],
)
def test_addresses_split_into_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value, "--listen") == expected


@pytest.mark.parametrize("value", ["nonsense", ":7001", "host:", "host:65536", "host:-1", "a b:1", "[x]y:1"])
def test_bad_addresses_name_the_flag(value: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_host_port(value, "--nbd-listen", reason="NBD_LISTEN_INVALID")
    assert refused.value.message.startswith(f"--nbd-listen {value!r}") and refused.value.reason == "NBD_LISTEN_INVALID"


def test_port_zero_only_where_any_free_port_makes_sense() -> None:
    with pytest.raises(InvalidArgument, match=r"port in 1\.\.65535"):
        parse_host_port("127.0.0.1:0", "NBD listen address", port_zero=False)
