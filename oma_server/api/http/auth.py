"""Who may read the dashboard and /metrics over HTTP: the one place operator authentication plugs in.

Today the OMA has no operator tokens, so every caller is a viewer and the listener is meant for loopback or a
trusted network. With tokens (issue #14) `authorize` checks the caller's token for the viewer role: an
`Authorization: Bearer` header, or — for the page's EventSource, which cannot set headers — a cookie the page's
first request set. It raises HTTPUnauthorized (no or bad token) or HTTPForbidden (a role below viewer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

VIEWER = "viewer"


async def authorize(request: web.Request, role: str = VIEWER) -> None:
    """Allow the request to act as `role`, or raise. Every request may read while the OMA has no tokens."""
    return None


@web.middleware
async def require_viewer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    await authorize(request, VIEWER)
    return await handler(request)
