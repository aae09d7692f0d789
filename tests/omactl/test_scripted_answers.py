"""omactl against scripted server answers (grpcio-testing): what it asks, in what order, and what it makes of each
answer — without a server. The test plays the OMA on a grpc_testing channel: it takes each call omactl makes,
checks the request and answers it (a reply, or a status with the ErrorInfo the real server attaches).

The real-process tests (test_omactl.py, test_cli_speaks_cli.py) show the same commands against a real OMA; these
pin down the client's own logic — name resolution, paging, error lines — answer by answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import grpc_testing
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from oma.v1 import vm_context_pb2
from oma_server.omactl.app import run
from oma_server.omactl.client import CliError

SERVICE = vm_context_pb2.DESCRIPTOR.services_by_name["VmContextService"]


class Omactl:
    """One omactl command running in a thread on a scripted channel; `result` is its exit code or CliError."""

    def __init__(self, argv: list[str]) -> None:
        self.channel = grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
        self.result: int | CliError | None = None
        self._thread = threading.Thread(target=self._run, args=(argv,), daemon=True)
        self._thread.start()

    def _run(self, argv: list[str]) -> None:
        try:
            self.result = run(["--server", "scripted:1", *argv], channel=self.channel)  # type: ignore[arg-type]
        except CliError as error:
            self.result = error

    def answer(self, method: str, check: Callable[[Any], None], reply: Message | None = None, **status: Any) -> None:
        """Take omactl's next call of `method`, check its request, answer with `reply` or a failed status."""
        taken: list[Any] = []
        taker = threading.Thread(
            target=lambda: taken.append(self.channel.take_unary_unary(SERVICE.methods_by_name[method])), daemon=True
        )
        taker.start()
        taker.join(10)
        if not taken:
            pytest.fail(f"omactl made no {method} call within 10 s (it ended with {self.result!r})")
        _, request, rpc = taken[0]
        check(request)
        if reply is not None:
            rpc.terminate(reply, (), grpc.StatusCode.OK, "")
        else:
            rpc.terminate(None, status["trailing"], status["code"], status["details"])

    def end(self) -> int | CliError:
        self._thread.join(10)
        assert not self._thread.is_alive(), "omactl did not finish after its last answer"
        assert self.result is not None
        return self.result


def refusal(code: grpc.StatusCode, details: str, reason: str, **metadata: str) -> dict[str, Any]:
    """A failed status as the OMA sends it: google.rpc.Status with one ErrorInfo in grpc-status-details-bin."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="oma.control-plane", metadata=metadata))
    status = status_pb2.Status(code=code.value[0], message=details, details=[info])
    return {"code": code, "details": details, "trailing": (("grpc-status-details-bin", status.SerializeToString()),)}


def vm(vm_id: str, name: str, vcenter: str = "vc.lab") -> vm_context_pb2.VmContext:
    return vm_context_pb2.VmContext(id=vm_id, name=name, vcenter=vcenter, appliance_id="vma-1")


def test_a_name_is_tried_as_an_id_then_looked_up_in_every_page(capsys: pytest.CaptureFixture[str]) -> None:
    cmd = Omactl(["--json", "vms", "show", "db-01"])
    cmd.answer(
        "GetVmContext",
        lambda r: r.id == "db-01" or pytest.fail(f"asked for {r.id!r}"),
        **refusal(grpc.StatusCode.NOT_FOUND, "VM context db-01 does not exist", "VM_CONTEXT_NOT_FOUND"),
    )
    cmd.answer(
        "ListVmContexts",
        lambda r: (r.page_token == "" and r.page_size > 0) or pytest.fail(str(r)),
        vm_context_pb2.ListVmContextsResponse(vm_contexts=[vm("a1", "web-01")], next_page_token="p2"),
    )
    cmd.answer(
        "ListVmContexts",
        lambda r: r.page_token == "p2" or pytest.fail(f"second page asked with {r.page_token!r}"),
        vm_context_pb2.ListVmContextsResponse(vm_contexts=[vm("b2", "db-01")]),
    )
    cmd.answer(
        "GetVmContext",
        lambda r: r.id == "b2" or pytest.fail(f"showed {r.id!r}, not the VM named db-01"),
        vm_context_pb2.GetVmContextResponse(vm_context=vm("b2", "db-01")),
    )
    assert cmd.end() == 0
    assert '"id": "b2"' in capsys.readouterr().out


def test_a_shared_name_is_refused_with_every_candidate() -> None:
    cmd = Omactl(["vms", "show", "web-01"])
    cmd.answer(
        "GetVmContext",
        lambda r: None,
        **refusal(grpc.StatusCode.NOT_FOUND, "VM context web-01 does not exist", "VM_CONTEXT_NOT_FOUND"),
    )
    cmd.answer(
        "ListVmContexts",
        lambda r: None,
        vm_context_pb2.ListVmContextsResponse(
            vm_contexts=[vm("a1", "web-01"), vm("a2", "web-01", vcenter="vc.other"), vm("c3", "db-01")]
        ),
    )
    error = cmd.end()
    assert isinstance(error, CliError) and error.exit_code == 1
    assert error.text.startswith("INVALID_ARGUMENT: 2 VM contexts are named 'web-01'")
    assert "a1 (vCenter vc.lab" in error.text and "a2 (vCenter vc.other" in error.text and "c3" not in error.text


def test_a_refusal_is_one_line_with_its_reason_and_an_omactl_hint() -> None:
    cmd = Omactl(["vms", "show", "3f2a-unknown"])
    cmd.answer(
        "GetVmContext",
        lambda r: None,
        **refusal(
            grpc.StatusCode.FAILED_PRECONDITION,
            "VM context 3f2a-unknown is replicating;\n follow it with WatchJob or stop it with CancelJob",
            "JOB_ALREADY_ACTIVE",
            vm_context_id="3f2a-unknown",
            job_id="j-7",
        ),
    )
    error = cmd.end()
    assert isinstance(error, CliError)
    assert "\n" not in error.text and error.text.startswith("FAILED_PRECONDITION: VM context 3f2a-unknown is")
    assert "'omactl jobs cancel j-7'" in error.text and "CancelJob" not in error.text  # the command, not the RPC
    assert error.text.endswith("(JOB_ALREADY_ACTIVE)")


def test_a_server_that_cannot_be_reached_is_named_without_grpc_internals() -> None:
    cmd = Omactl(["vms", "show", "db-01"])
    cmd.answer(
        "GetVmContext",
        lambda r: None,
        code=grpc.StatusCode.UNAVAILABLE,
        details="failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused",
        trailing=(),
    )
    error = cmd.end()
    assert isinstance(error, CliError)
    assert error.text == "UNAVAILABLE: cannot reach the OMA at scripted:1 (is oma-server running?)"
