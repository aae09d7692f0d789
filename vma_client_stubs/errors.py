"""Reading the OMA's errors on the client side: the `google.rpc.ErrorInfo` the server puts in every failed call.

The server (`oma_server.api.status`) answers each refusal with a status whose details hold one ErrorInfo (AIP-193:
an UPPER_SNAKE reason, the domain `oma.control-plane`, metadata naming the resource). This is the one place a client
— a VMA, omactl, a script — takes it out again.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


def error_info_of(call_error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo in a failed call's status details, if any (sync and asyncio calls alike)."""
    trailing = call_error.trailing_metadata() or ()  # type: ignore[attr-defined]
    for key, value in trailing:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None
