"""Reference servers for `bench.progress`, each run as its own process (`python -m bench._progress_servers ...`).

- `echo PORT`: a raw grpc.aio bidirectional echo server (the ceiling of the stack): every ConnectRequest it reads
  is written straight back, parsed and serialized with the same generated message classes the OMA uses.
- `poll PORT N RATE`: the old design's VMA side: one aiohttp app serving `/progress/<vma>` with the latest JSON
  progress report of each of N VMAs, updated in-process RATE times per second per VMA (phases spread evenly).

Both print `ready` on stdout once they listen and stop on SIGTERM.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import signal
import sys
import time
from collections.abc import AsyncIterator

import grpc

from oma.v1 import gateway_pb2

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Connect"
DISK_BYTES = 100 << 30


def echo_server_options() -> list[tuple[str, int]]:
    return [("grpc.max_concurrent_streams", 10_000), ("grpc.so_reuseport", 0)]


async def _echo(
    request_iterator: AsyncIterator[gateway_pb2.ConnectRequest], context: grpc.aio.ServicerContext
) -> AsyncIterator[gateway_pb2.ConnectRequest]:
    async for request in request_iterator:
        yield request


async def run_echo(port: int) -> None:
    server = grpc.aio.server(options=echo_server_options(), maximum_concurrent_rpcs=20_000)
    handler = grpc.stream_stream_rpc_method_handler(
        _echo,
        request_deserializer=gateway_pb2.ConnectRequest.FromString,
        response_serializer=gateway_pb2.ConnectRequest.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, {"Connect": handler}),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"echo server cannot listen on 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0.5)


def progress_json(vma: int, seq: int, sent_at: float) -> bytes:
    """The old VMA's JSON progress document, with the fields of a ProgressReport of 2 disks."""
    done = seq * (64 << 20)
    return json.dumps(
        {
            "job_id": f"job-{vma:05d}",
            "sequence": seq,
            "phase": "copying",
            "current_operation": "Copying disk 1 of 2",
            "bytes_done": 2 * done,
            "bytes_total": 2 * DISK_BYTES,
            "throughput_bytes_per_second": 128 << 20,
            "eta_seconds": 1200,
            "disks": [
                {
                    "disk_id": f"disk-{vma:05d}-{i}",
                    "bytes_done": done,
                    "bytes_total": DISK_BYTES,
                    "throughput_bytes_per_second": 64 << 20,
                    "phase": "copying",
                    "mode": "full",
                    "resume_token": str(seq),
                }
                for i in range(2)
            ],
            "sent_at": sent_at,
        }
    ).encode()


async def run_poll_target(port: int, n: int, rate: float) -> None:
    from aiohttp import web

    latest: dict[str, tuple[int, float]] = {}  # vma name -> (sequence, updated at)

    async def progress(request: web.Request) -> web.Response:
        name = request.match_info["vma"]
        entry = latest.get(name)
        if entry is None:
            return web.Response(status=404)
        index = int(name.rsplit("-", 1)[-1])
        return web.Response(body=progress_json(index, entry[0], entry[1]), content_type="application/json")

    async def update() -> None:
        # Each VMA updates its report `rate` times a second, phases spread evenly (same schedule as the stream run).
        t0 = time.time()
        period = 1.0 / rate
        due = [(t0 + (v / n) * period, v, 1) for v in range(n)]
        heapq.heapify(due)
        while True:
            now = time.time()
            while due[0][0] <= now:
                at, v, seq = heapq.heappop(due)
                latest[f"vma-{v:05d}"] = (seq, now)
                heapq.heappush(due, (at + period, v, seq + 1))
            await asyncio.sleep(0.01)

    app = web.Application()
    app.router.add_get("/progress/{vma}", progress)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    updater = asyncio.create_task(update())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    updater.cancel()
    await runner.cleanup()


def main(argv: list[str]) -> int:
    if argv[:1] == ["echo"]:
        asyncio.run(run_echo(int(argv[1])))
    elif argv[:1] == ["poll"]:
        asyncio.run(run_poll_target(int(argv[1]), int(argv[2]), float(argv[3])))
    else:
        print("usage: python -m bench._progress_servers echo PORT | poll PORT N RATE", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
