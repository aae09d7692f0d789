"""The HTTP listener: one aiohttp application with the dashboard (page, JSON, Server-Sent Events) and /metrics,
every route but the login page and the static files behind the operators' API tokens (`auth.HttpAuth`, viewer
role). Optional TLS from a certificate and key."""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST

from oma_server import metrics
from oma_server.addresses import parse_host_port
from oma_server.api.http.auth import LOGIN_PATH, LOGOUT_PATH, HttpAuth
from oma_server.api.http.dashboard import Dashboard
from oma_server.api.http.scrape import Scraper
from oma_server.settings import Settings

STATIC = Path(__file__).with_name("static")


def build_application(dashboard: Dashboard, scraper: Scraper, auth: HttpAuth) -> web.Application:
    web_app = web.Application(middlewares=[auth.middleware])

    async def metrics_page(request: web.Request) -> web.Response:
        body = metrics.render(await scraper.state())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    web_app.router.add_get("/", index)
    web_app.router.add_get(LOGIN_PATH, auth.login_page)
    web_app.router.add_post(LOGIN_PATH, auth.login)
    web_app.router.add_post(LOGOUT_PATH, auth.logout)
    web_app.router.add_get("/metrics", metrics_page)
    web_app.router.add_get("/api/overview", dashboard.overview)
    web_app.router.add_get("/api/jobs/{job_id}/log", dashboard.job_log)
    web_app.router.add_get("/api/events", dashboard.events)
    web_app.router.add_static("/static/", STATIC)
    web_app.on_shutdown.append(dashboard.close_streams)
    return web_app


class HttpServer:
    """The listener of one OMA process; `port` is the bound port once started (for `--http-listen HOST:0`)."""

    def __init__(self, settings: Settings, dashboard: Dashboard, scraper: Scraper, auth: HttpAuth) -> None:
        self.settings = settings
        application = build_application(dashboard, scraper, auth)
        self.runner = web.AppRunner(application, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        self.port = 0

    def _tls(self) -> ssl.SSLContext | None:
        settings = self.settings
        if not settings.http_tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.http_tls_cert, settings.http_tls_key)
        return context

    async def start(self) -> int:
        host, port = parse_host_port(self.settings.http_listen, "--http-listen")
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=self._tls())
        await site.start()
        server = site._server  # the bound socket is the only way to learn the port asked as 0
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        scheme = "https" if self.settings.http_tls_cert else "http"
        logger.info("dashboard and /metrics on {scheme}://{host}:{port}/", scheme=scheme, host=host, port=self.port)
        return self.port

    async def stop(self) -> None:
        """Ends the event streams and closes the listener; nothing to do if it never started."""
        if self.runner.server is not None:
            await self.runner.cleanup()
