"""Who may read the dashboard and /metrics over HTTP: the operators' API tokens, with the viewer role or above.

A caller proves itself with the same token the gRPC API takes, in one of two places:
- an `Authorization: Bearer <token>` header: scrapers (Prometheus' `authorization: credentials_file`), curl, scripts;
- the `oma_session` cookie, which the login page (`/login`: one field for the token) sets for a browser, because
  the page's EventSource cannot send headers. The cookie holds the token itself, HttpOnly (the page's scripts never
  see it), SameSite=Strict (no other site's page makes the browser send it) and Secure when the listener serves TLS;
  it lasts as long as the browser session. A server-side session store would add state to keep and expire; this
  way revoking or expiring the token ends the browser's access at its next request.

Every request is authenticated anew (one indexed lookup), so a revoked token stops at once; a live event stream is
re-checked every `reauth_interval_s` and ended when its token no longer passes. Only the login page and the static
files (no data in them) answer without a token. A refusal is 401 (no, a malformed, unknown, revoked or expired
token; `WWW-Authenticate: Bearer`) or 403 (a role below viewer) as JSON with the reason and message the gRPC API
gives; a page request without a token is sent to the login page instead. No response or log line carries a token.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from loguru import logger

from oma_server.api.http.refusals import HTTP_STATUS, refusal
from oma_server.errors import DomainError, PermissionDenied, Unauthenticated
from oma_server.security.tokens import Operator, Role, TokenService

SESSION_COOKIE = "oma_session"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
PUBLIC_PREFIXES = ("/static/",)
LOGIN_PAGE = Path(__file__).with_name("templates") / "login.html"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def presented_token(request: web.Request) -> str:
    """The token of the `Authorization: Bearer` header, else of the session cookie; empty when neither."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(SESSION_COOKIE, "").strip()


class HttpAuth:
    def __init__(self, tokens: TokenService, *, secure_cookie: bool, reauth_interval_s: float = 30.0) -> None:
        self.tokens = tokens
        self.secure_cookie = secure_cookie
        self.reauth_interval_s = reauth_interval_s

    async def operator(self, request: web.Request) -> Operator:
        """The viewer (or higher) whose token the request carries; raises Unauthenticated or PermissionDenied."""
        return await self.viewer(presented_token(request))

    async def viewer(self, token: str) -> Operator:
        """The operator `token` names, if its role reaches viewer; raises Unauthenticated or PermissionDenied."""
        if not token:
            raise Unauthenticated(
                "the dashboard and /metrics need an API token with the viewer role: log in at /login, or send "
                "'Authorization: Bearer <token>' (oma-server create-token --role viewer makes one)",
                reason="TOKEN_MISSING",
            )
        operator = await self.tokens.authenticate(token)
        if operator.role < Role.VIEWER:  # every role reaches viewer today; the check stays for roles to come
            raise PermissionDenied(f"token {operator.name} may not read the dashboard", reason="ROLE_TOO_LOW")
        return operator

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in (LOGIN_PATH, LOGOUT_PATH) or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        try:
            await self.operator(request)
        except DomainError as error:
            if request.path == "/" and request.method == "GET":
                raise web.HTTPSeeOther(LOGIN_PATH) from None
            return refusal(error)
        return await handler(request)

    async def login_page(self, request: web.Request) -> web.Response:
        return self._login_form("", status=200)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """The login form's POST: a valid token becomes the session cookie and the browser goes to the page."""
        token = str((await request.post()).get("token", "")).strip()
        try:
            operator = await self.viewer(token)
        except DomainError as error:
            return self._login_form(error.message, status=HTTP_STATUS.get(error.category, 400))
        logger.bind(token_id=operator.token_id).info("dashboard login by {actor}", actor=operator.actor)
        redirect = web.HTTPSeeOther("/")
        redirect.set_cookie(
            SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=self.secure_cookie, path="/"
        )
        raise redirect

    async def logout(self, request: web.Request) -> web.StreamResponse:
        redirect = web.HTTPSeeOther(LOGIN_PATH)
        redirect.del_cookie(SESSION_COOKIE, path="/")
        raise redirect

    def _login_form(self, problem: str, status: int) -> web.Response:
        page = LOGIN_PAGE.read_text().replace("{{problem}}", html.escape(problem))
        return web.Response(text=page, status=status, content_type="text/html")

    async def until_refused(self, request: web.Request) -> DomainError:
        """For a long-lived response: re-check its token every `reauth_interval_s`; returns the refusal once it
        fails (revoked or expired), so a revoked viewer does not go on watching."""
        while True:
            await asyncio.sleep(self.reauth_interval_s)
            try:
                await self.operator(request)
            except DomainError as error:
                logger.info("ending an event stream: its token no longer passes ({reason})", reason=error.reason)
                return error
