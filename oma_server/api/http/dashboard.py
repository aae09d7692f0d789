"""The dashboard's data: JSON snapshots of appliances and VMs, job logs, and the jobs' live updates as Server-Sent
Events bridged from the watch streams (`JobWatcher.watch_jobs`).

Everything is sent in the proto3 JSON mapping of the gRPC API's own messages (what grpcurl prints and the SDKs
read), converted by the servicers' converters: the page and the API cannot drift apart.

SSE resume: an event's `id` is its watch revision, set only on CHANGE, SYNCED and PROGRESS_NOTIFY (the revisions a
watch may resume from; a SNAPSHOT's is the job's, not the stream's). The browser's EventSource sends the last one
back as `Last-Event-ID` when it reconnects and the watch resumes after it; a revision the history no longer holds
sends a `reset` event and a fresh snapshot follows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from google.protobuf import json_format
from google.protobuf.message import Message

from oma_server.api.convert import appliance_to_proto, job_log_entry_to_proto, job_update_to_proto, vm_context_to_proto
from oma_server.api.http.auth import HttpAuth
from oma_server.api.http.refusals import refusal
from oma_server.api.schedules import RpoReader, with_rpo
from oma_server.appliances import ApplianceService
from oma_server.errors import DomainError
from oma_server.info import ServerInfo
from oma_server.job_watch import SNAPSHOT, JobWatcher, Update
from oma_server.joblog import JobLogService
from oma_server.vm_contexts.service import VmContextService
from oma_server.watch import RevisionCompacted

T = TypeVar("T")
PAGE = 1000
# The page lists at most this many appliances and VMs (each a page of the service's own listing).
MAX_PAGES = 10


def as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


async def every_page(fetch: Callable[[str], Awaitable[tuple[list[T], str]]]) -> list[T]:
    """Items of a paginated listing, following its tokens (at most MAX_PAGES pages)."""
    items: list[T] = []
    token = ""
    for _ in range(MAX_PAGES):
        page, token = await fetch(token)
        items += page
        if not token:
            break
    return items


class Dashboard:
    def __init__(
        self,
        *,
        appliances: ApplianceService,
        vms: VmContextService,
        joblog: JobLogService,
        job_watch: JobWatcher,
        info: Callable[[], ServerInfo],
        auth: HttpAuth,
        rpo: RpoReader,
    ) -> None:
        self.appliances = appliances
        self.vms = vms
        self.joblog = joblog
        self.job_watch = job_watch
        self.info = info
        self.auth = auth
        self.rpo = rpo
        self._streams: set[asyncio.Task[Any]] = set()

    async def overview(self, request: web.Request) -> web.Response:
        """Appliances (connection, last seen) and VMs (status, RPO) for the page's tables."""

        async def appliances(token: str) -> tuple[list[Any], str]:
            page = await self.appliances.list(PAGE, token, None)
            return page.appliances, page.next_page_token

        async def vms(token: str) -> tuple[list[Any], str]:
            page = await self.vms.list_vms(PAGE, token)
            return page.vms, page.next_page_token

        # the RPO as GetVmContext gives it: the recovery point is the last completed and verified sync
        vm_protos = await with_rpo(self.rpo, [vm_context_to_proto(v) for v in await every_page(vms)])
        info = self.info()
        return web.json_response(
            {
                "server": {"version": info.version, "processId": info.process_id, "database": info.database_kind},
                "appliances": [as_json(appliance_to_proto(a)) for a in await every_page(appliances)],
                "vms": [{**as_json(v), "recoveryPoint": as_json(v.rpo).get("recoveryPoint", "")} for v in vm_protos],
            }
        )

    async def job_log(self, request: web.Request) -> web.Response:
        try:
            page = await self.joblog.list(request.match_info["job_id"], PAGE, "")
        except DomainError as error:
            return refusal(error)
        return web.json_response({"entries": [as_json(job_log_entry_to_proto(e)) for e in page.entries]})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Every job's updates (optionally of one VM: `?vm=ID`) as SSE, resumed from `Last-Event-ID`; ended with a
        `refused` event when the caller's token stops passing (revoked or expired)."""
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            async with sse_response(request) as sse:
                last = sse.last_event_id or ""
                pump = asyncio.create_task(
                    self._pump(sse, request.query.get("vm", ""), int(last) if last.isdigit() else 0)
                )
                refused = asyncio.create_task(self.auth.until_refused(request))
                try:
                    await asyncio.wait({pump, refused}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    pump.cancel()
                    refused.cancel()
                if refused.done() and not refused.cancelled():
                    error = refused.result()
                    await sse.send(json.dumps({"reason": error.reason, "message": error.message}), event="refused")
                elif not pump.cancelled() and pump.exception() is not None:
                    raise cast(BaseException, pump.exception())
            return sse
        finally:
            self._streams.discard(task)

    async def _pump(self, sse: EventSourceResponse, vm_context_id: str, from_revision: int) -> None:
        while sse.is_connected():
            try:
                # watch_jobs is an async generator (typed as an iterator): aclosing ends it with the client
                updates = cast(
                    AsyncGenerator[Update, None],
                    self.job_watch.watch_jobs(vm_context_id, from_revision, include_finished=True),
                )
                async with aclosing(updates) as stream:
                    async for update in stream:
                        resume = None if update.kind == SNAPSHOT else str(update.revision)
                        payload = json.dumps(as_json(job_update_to_proto(update)))
                        await sse.send(payload, id=resume, event="update")
            except RevisionCompacted as error:
                await sse.send(json.dumps({"message": error.message}), event="reset")
                from_revision = 0

    async def close_streams(self, _: web.Application) -> None:
        """At shutdown: end every event stream (their watches never end by themselves)."""
        for task in list(self._streams):
            task.cancel()
