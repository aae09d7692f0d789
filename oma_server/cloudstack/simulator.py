"""A CloudStack management server in miniature, at the HTTP level.

It answers `/client/api` (GET and POST) the way CloudStack does for the commands the OMA uses: signed requests
(sim_auth), `<command>response` JSON envelopes, `count` + list with page/pagesize, async commands returning `jobid`
and queryAsyncJobResult with jobstatus 0/1/2 (sim_jobs), errors as HTTP status = errorcode. A request for a command
the server does not offer fails API verification, as in ApiServer.verifyRequest: HTTP 401 — with the generic text
when the command does not exist, with "either does not exist, is not available for user" when the account's role
does not allow it. Resources live in sim_state (persisted as JSON), their commands in sim_catalogue, sim_volumes,
sim_snapshots and sim_vms; the OMA VM's guest view of attached volumes in sim_guest.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from loguru import logger

# The resource modules register their command handlers into COMMANDS when imported.
from oma_server.addresses import parse_host_port
from oma_server.cloudstack import sim_catalogue, sim_guest, sim_snapshots, sim_vms, sim_volumes  # noqa: F401
from oma_server.cloudstack.config import CloudStackSettings
from oma_server.cloudstack.sim_api import ADMIN_COMMANDS, COMMANDS, Params
from oma_server.cloudstack.sim_auth import verify_request
from oma_server.cloudstack.sim_errors import ApiError
from oma_server.cloudstack.sim_faults import Faults
from oma_server.cloudstack.sim_seed import seed_world
from oma_server.cloudstack.sim_state import RequestRecord, SimulatorState

API_PATH = "/client/api"
CLIENT_CONFIG = "cloudstack.ini"
STATE_KEY: web.AppKey[SimulatorState] = web.AppKey("cloudstack_sim_state", SimulatorState)
AUTH_ERROR_TEXT = "unable to verify user credentials and/or request signature"


@dataclass(frozen=True)
class Refusal:
    reason: str  # for the simulator's log
    errortext: str  # what CloudStack answers


def refusal(state: SimulatorState, command_name: str, params: dict[str, str]) -> Refusal | None:
    """Why ApiServer.verifyRequest would refuse the request, or None. An unknown command is refused before the
    signature is looked at; a command the account's role may not call gets its own text."""
    if command_name and command_name.lower() not in COMMANDS:
        return Refusal(f"unknown command {command_name}", AUTH_ERROR_TEXT)
    why = verify_request(params, state.api_key, state.secret_key)
    if why is not None:
        return Refusal(why, AUTH_ERROR_TEXT)
    if command_name.lower() in ADMIN_COMMANDS and state.account.get("roletype", "Admin") != "Admin":
        return Refusal(
            f"{command_name} is for root admins",
            f"The given command '{command_name}' either does not exist, is not available for user.",
        )
    return None


def _json(envelope: str, body: dict[str, Any], status: int = 200) -> web.Response:
    reason = "OK" if status == 200 else ("Unauthorized" if status == 401 else "CloudStack API error")
    return web.json_response({envelope: body}, status=status, reason=reason)


async def _handle_api(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    params: dict[str, str] = {}
    for key, value in request.query.items():
        params.setdefault(key, value)
    if request.method == "POST":
        form = await request.post()
        for key, item in form.items():
            if isinstance(item, str):
                params.setdefault(key, item)
    command_name = next((v for k, v in params.items() if k.lower() == "command"), "")
    envelope = f"{command_name.lower()}response" if command_name else "errorresponse"
    log = logger.bind(sim_command=command_name)

    if command_name and state.faults.take_drop(command_name):
        state.requests.append(RequestRecord(command_name, 0))
        log.debug("simulator drops the connection (fault)")
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp treats this as a handler that went away with its client

    why = refusal(state, command_name, params)
    if why is not None:
        state.requests.append(RequestRecord(command_name, 401))
        log.info("simulator refused a request: {}", why.reason)
        return _json(envelope, {"uuidList": [], "errorcode": 401, "errortext": why.errortext}, 401)

    try:
        if not command_name:
            raise ApiError(400, "no command specified", ApiError.CS_SERVER_API)
        fault = state.faults.take_api_failure(command_name)
        if fault is not None:
            raise ApiError(fault.errorcode, fault.errortext, fault.cserrorcode)
        body = COMMANDS[command_name.lower()](state, Params(command_name, params))
    except ApiError as e:
        state.requests.append(RequestRecord(command_name, e.errorcode))
        log.debug("simulator answers {}: {}", e.errorcode, e.errortext)
        return _json(envelope, e.body(), e.errorcode)
    state.requests.append(RequestRecord(command_name, 200))
    # CloudStack commits before it answers: a command it accepted, or a job result it showed, is not lost when the
    # simulator dies. (Lists and unfinished jobs reveal nothing a client acts on, and do not wait.)
    lowered = command_name.lower()
    if not lowered.startswith(("list", "query")):
        state.changed()
        await state.durable()
    elif lowered == "queryasyncjobresult" and body.get("jobstatus", 0) != 0:
        await state.durable()
    return _json(envelope, body)


def create_app(state: SimulatorState) -> web.Application:
    """The aiohttp application serving CloudStack's API at /client/api for `state`."""
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_route("GET", API_PATH, _handle_api)
    app.router.add_route("POST", API_PATH, _handle_api)
    return app


class CloudStackSimulator:
    """The simulator in this process: `await sim.start()`, use `sim.url` and keys, `await sim.stop()`."""

    def __init__(
        self,
        state_dir: Path,
        listen: str = "127.0.0.1:0",
        api_key: str | None = None,
        secret_key: str | None = None,
        seed_config: Path | Mapping[str, Any] | None = None,
    ) -> None:
        self.host, self.port = parse_host_port(listen, "--listen")
        self.state = SimulatorState(Path(state_dir), api_key=api_key, secret_key=secret_key)
        #: the world a fresh state dir starts with (a JSON file or a mapping; sim_seed.DEFAULT_SEED's shape)
        self.seed_config = seed_config
        self._runner: web.AppRunner | None = None

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{API_PATH}"

    @property
    def api_key(self) -> str:
        return self.state.api_key

    @property
    def secret_key(self) -> str:
        return self.state.secret_key

    @property
    def oma_vm_id(self) -> str:
        return self.state.oma_vm_id

    @property
    def zone_id(self) -> str:
        return self.state.zone_id

    @property
    def device_root(self) -> Path:
        """What the OMA's --device-root should be to see the volumes attached to it."""
        return self.state.device_dir

    @property
    def sys_root(self) -> Path:
        """What the OMA's sysfs root should be to see the guest's block devices (/sys on a real OMA VM)."""
        return self.state.sys_root

    def settings(self, **overrides: Any) -> CloudStackSettings:
        """Client settings that reach this simulator (fast polling: the simulator's jobs are quick)."""
        values: dict[str, Any] = {
            "url": self.url,
            "api_key": self.api_key,
            "secret_key": self.secret_key,
            "zone": self.zone_id,
            "oma_vm_id": self.oma_vm_id,
            "poll_interval_s": 0.05,
            "async_job_timeout_s": 30.0,
            "timeout_s": 10.0,
            "retry_base_delay_s": 0.05,
            "retry_max_delay_s": 0.5,
        }
        values.update(overrides)
        return CloudStackSettings(**values)

    async def start(self) -> None:
        await asyncio.to_thread(self._load_or_seed)
        self._runner = web.AppRunner(create_app(self.state), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        await asyncio.to_thread(self._write_client_config)
        logger.bind(url=self.url).info(
            "CloudStack simulator listening on {url}; the cs CLI reaches it with CLOUDSTACK_CONFIG={ini} cs listZones",
            url=self.url,
            ini=self.client_config,
        )

    @property
    def client_config(self) -> Path:
        """A `cs` (the CloudStack CLI) config file naming this simulator's endpoint and keys, rewritten at every start
        (the port may change) and readable by its owner only: `CLOUDSTACK_CONFIG=<it> cs listZones`."""
        return self.state.state_dir / CLIENT_CONFIG

    def _write_client_config(self) -> None:
        text = f"[cloudstack]\nendpoint = {self.url}\nkey = {self.api_key}\nsecret = {self.secret_key}\n"
        fd = os.open(self.client_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the secret key
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)

    def _load_or_seed(self) -> None:
        state = self.state
        state.make_dirs()
        if not state.load():
            seed_world(state, self.seed_config)
        state.recover_after_restart()
        sim_guest.sync(state)
        state.save()

    async def stop(self) -> None:
        tasks = list(self.state.job_tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.state.flush()
        logger.info("CloudStack simulator stopped")

    async def __aenter__(self) -> CloudStackSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
