"""The dashboard and /metrics answer only to operators' API tokens (viewer or above), by header or by the login
page's session cookie; a revoked token stops at its next request and ends a live event stream."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from oma.v1 import access_pb2, access_pb2_grpc
from oma_server.api.http.auth import SESSION_COOKIE
from oma_server.server import OmaServer
from tests.clients import oma_channel
from tests.failover.helpers import start_oma
from tests.tls import make_pki
from tests.web.conftest import EventStream

DATA_ROUTES = ("/metrics", "/api/overview", "/api/events", "/api/jobs/any-job/log")


@pytest.fixture
async def oma(tmp_path: Path) -> AsyncIterator[OmaServer]:
    server = await start_oma(tmp_path, http_listen="127.0.0.1:0", http_reauth_interval_s=0.2)
    yield server
    await server.stop(grace=0.2)


def base(server: OmaServer, scheme: str = "http") -> str:
    assert server.http is not None
    return f"{scheme}://127.0.0.1:{server.http.port}"


def anonymous() -> aiohttp.ClientSession:
    """A client that keeps cookies set by 127.0.0.1 (aiohttp's default jar ignores those of IP addresses)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=30))


async def create_token(server: OmaServer, name: str, role: int) -> access_pb2.CreateApiTokenResponse:
    async with oma_channel(server) as channel:
        return await access_pb2_grpc.AccessServiceStub(channel).CreateApiToken(
            access_pb2.CreateApiTokenRequest(name=name, role=role)
        )


async def revoke_token(server: OmaServer, token_id: str) -> None:
    async with oma_channel(server) as channel:
        await access_pb2_grpc.AccessServiceStub(channel).RevokeApiToken(access_pb2.RevokeApiTokenRequest(id=token_id))


async def test_without_a_token_the_data_is_refused_and_the_page_sends_to_the_login(oma: OmaServer) -> None:
    async with anonymous() as session:
        for route in DATA_ROUTES:
            async with session.get(base(oma) + route) as response:
                assert response.status == 401, route
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                body = await response.json()
                assert body["reason"] == "TOKEN_MISSING" and "/login" in body["message"], route
        async with session.get(base(oma) + "/", allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/login"
        async with session.get(base(oma) + "/login") as response:
            assert response.status == 200 and 'name="token"' in await response.text()
        async with session.get(base(oma) + "/static/dashboard.css") as response:
            assert response.status == 200, "the login page's stylesheet needs no token"


async def test_a_wrong_token_is_refused_without_being_echoed(oma: OmaServer) -> None:
    forged = "oma_0123456789abcdef_" + "x" * 43
    async with anonymous() as session:
        for headers in ({"Authorization": f"Bearer {forged}"}, {"Cookie": f"{SESSION_COOKIE}={forged}"}):
            async with session.get(base(oma) + "/metrics", headers=headers) as response:
                text = await response.text()
                assert response.status == 401 and "TOKEN_INVALID" in text and forged not in text


async def test_a_viewer_token_reads_metrics_and_the_overview(oma: OmaServer) -> None:
    viewer = await create_token(oma, "prometheus", access_pb2.ROLE_VIEWER)
    async with anonymous() as session:
        headers = {"Authorization": f"Bearer {viewer.secret}"}
        async with session.get(base(oma) + "/metrics", headers=headers) as response:
            assert response.status == 200 and "oma_replication_jobs" in await response.text()
        async with session.get(base(oma) + "/api/overview", headers=headers) as response:
            assert response.status == 200 and "appliances" in await response.json()


async def test_login_sets_an_httponly_strict_cookie_and_logout_clears_it(oma: OmaServer) -> None:
    viewer = await create_token(oma, "browser", access_pb2.ROLE_VIEWER)
    async with anonymous() as session:
        async with session.post(base(oma) + "/login", data={"token": "not-a-token"}) as response:
            text = await response.text()
            assert response.status == 401 and "not valid" in text and "not-a-token" not in text
            assert SESSION_COOKIE not in response.cookies
        async with session.post(base(oma) + "/login", data={"token": viewer.secret}, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/"
            cookie = response.cookies[SESSION_COOKIE]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
            assert cookie["path"] == "/"
        async with session.get(base(oma) + "/") as response:
            assert response.status == 200 and 'id="jobs"' in await response.text()
        async with session.get(base(oma) + "/api/overview") as response:
            assert response.status == 200, "the cookie stands for the token"
        async with session.post(base(oma) + "/logout", allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/login"
        async with session.get(base(oma) + "/api/overview") as response:
            assert response.status == 401, "logged out: the cookie is gone"


async def test_a_revoked_token_ends_its_event_stream_and_its_next_request(oma: OmaServer) -> None:
    viewer = await create_token(oma, "revoked-soon", access_pb2.ROLE_VIEWER)
    async with anonymous() as session:
        await session.post(base(oma) + "/login", data={"token": viewer.secret})
        async with session.get(base(oma) + "/api/events") as response:
            assert response.status == 200
            events = EventStream(response)
            _, synced = await events.next_update()
            assert synced["kind"] == "UPDATE_KIND_SYNCED", "no jobs yet: the watch is synced at once"
            await revoke_token(oma, viewer.token.id)
            # Within a re-check interval (0.2 s here) the stream says why and ends cleanly.
            async with asyncio.timeout(10):
                refused = await events.next()
                assert refused["event"] == "refused" and "TOKEN_REVOKED" in refused["data"]
                assert await response.content.read() == b"", "the stream ends after the refusal"
        async with session.get(base(oma) + "/api/overview") as response:
            assert response.status == 401 and (await response.json())["reason"] == "TOKEN_REVOKED"


async def test_the_session_cookie_is_secure_over_https(tmp_path: Path) -> None:
    pki = await asyncio.to_thread(make_pki, tmp_path / "pki")
    server = await start_oma(tmp_path, http_listen="127.0.0.1:0", http_tls_cert=pki.cert, http_tls_key=pki.key)
    try:
        viewer = await create_token(server, "tls-browser", access_pb2.ROLE_VIEWER)
        trusted = ssl.create_default_context(cafile=str(pki.ca))
        async with anonymous() as session:
            url = base(server, "https") + "/login"
            async with session.post(url, data={"token": viewer.secret}, ssl=trusted, allow_redirects=False) as response:
                assert response.status == 303 and response.cookies[SESSION_COOKIE]["secure"]
    finally:
        await server.stop(grace=0.2)
