"""A refused HTTP request: JSON with the reason, message and metadata the gRPC API gives for the same error."""

from __future__ import annotations

from aiohttp import web

from oma_server.errors import Category, DomainError

HTTP_STATUS = {
    Category.INVALID_ARGUMENT: 400,
    Category.OUT_OF_RANGE: 400,
    Category.UNAUTHENTICATED: 401,
    Category.PERMISSION_DENIED: 403,
    Category.NOT_FOUND: 404,
}


def refusal(error: DomainError) -> web.Response:
    status = HTTP_STATUS.get(error.category, 409)
    headers = {"WWW-Authenticate": 'Bearer realm="oma"'} if status == 401 else None
    return web.json_response(
        {"reason": error.reason, "message": error.message, "metadata": error.metadata}, status=status, headers=headers
    )
