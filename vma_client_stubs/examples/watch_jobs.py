"""Example: list the appliances and VMs an OMA knows, then follow every job live (resuming across disconnects).

    python -m vma_client_stubs.examples.watch_jobs --server 127.0.0.1:50051 [--ca ca.pem] [--token-file F]

`--until-synced` stops after the current state. Ctrl-C ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc

from oma.v1 import appliance_pb2, failover_pb2, job_pb2, replication_pb2, vm_context_pb2
from vma_client_stubs.operator_client import OperatorClient, TlsConfig, describe_error


def short(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


async def main(args: argparse.Namespace, tls: TlsConfig | None, token: str | None) -> int:
    async with OperatorClient(args.server, tls=tls, token=token) as oma:
        appliances = [a async for a in oma.iter_appliances()]
        print(f"{len(appliances)} appliance(s)")
        for a in appliances:
            state = short(appliance_pb2.ConnectionState, a.connection_state, "CONNECTION_STATE_")
            print(f"  {a.id}  {a.name}  {state}")
        vms = [vm async for vm in oma.iter_vm_contexts()]
        print(f"{len(vms)} VM(s)")
        for vm in vms:
            status = short(vm_context_pb2.VmContextStatus, vm.status, "VM_CONTEXT_STATUS_")
            print(f"  {vm.id}  {vm.name}  {status}  {len(vm.disks)} disk(s)")
        async for update in oma.watch_jobs(include_finished=True):
            if update.kind == job_pb2.UPDATE_KIND_SYNCED:
                print(f"-- synced at revision {update.revision}", flush=True)
                if args.until_synced:
                    return 0
            elif update.WhichOneof("job") == "replication_job":
                job = update.replication_job
                status = short(replication_pb2.ReplicationJobStatus, job.status, "REPLICATION_JOB_STATUS_")
                print(f"job {job.id}  {status}  {job.percent:.1f} %  {job.bytes_done}/{job.bytes_total} bytes")
            elif update.WhichOneof("job") == "failover_job":
                fjob = update.failover_job
                status = short(failover_pb2.FailoverJobStatus, fjob.status, "FAILOVER_JOB_STATUS_")
                print(f"failover {fjob.id}  {status}  step {fjob.current_step or '-'}")
    return 0


def run() -> int:
    parser = argparse.ArgumentParser(prog="watch_jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("OMA_SERVER", "127.0.0.1:50051"), help="OMA HOST:PORT")
    parser.add_argument("--ca", help="PEM file of the OMA's CA (TLS)")
    parser.add_argument("--token-file", help="file holding an operator token")
    parser.add_argument("--until-synced", action="store_true", help="stop after the current state")
    args = parser.parse_args()
    tls = TlsConfig.from_files(ca=args.ca) if args.ca else None
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    try:
        return asyncio.run(main(args, tls, token))
    except grpc.RpcError as error:
        print(f"watch_jobs: {describe_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(run())
