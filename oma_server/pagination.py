"""Page tokens for List RPCs (AIP-158): opaque to clients, validated on the way in."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, TypeVar

from oma_server.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 2**62

T = TypeVar("T")


def page_size_of(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            f"page_size must not be negative (got {requested}); 0 means the default of {DEFAULT_PAGE_SIZE}",
            reason="PAGE_SIZE_INVALID",
            field="page_size",
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    if not token:
        return 0
    try:
        padded = token + "=" * (-len(token) % 4)
        offset = json.loads(base64.urlsafe_b64decode(padded.encode()))["o"]
        if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:  # beyond a database integer: not ours
            raise ValueError(offset)
        return offset
    except (ValueError, KeyError, TypeError, binascii.Error, json.JSONDecodeError) as exc:
        raise InvalidArgument(
            "page_token is not one this server issued; pass next_page_token from the previous response",
            reason="PAGE_TOKEN_INVALID",
            field="page_token",
        ) from exc


def next_token(offset: int, page_size: int, fetched: int) -> str:
    """Fetch page_size + 1 rows; a token is issued only when that extra row exists."""
    return encode_token(offset + page_size) if fetched > page_size else ""


def fetch_page(query: Any, page_size: int, page_token: str) -> tuple[list[Any], str]:
    """One page of a Peewee query (call it on a database thread): the rows and the next page's token."""
    size = page_size_of(page_size)
    offset = decode_token(page_token)
    rows = list(query.offset(offset).limit(size + 1))
    return rows[:size], next_token(offset, size, len(rows))


def page_of(items: Sequence[T], page_size: int, page_token: str) -> tuple[list[T], str]:
    """One page of a list already in memory (answers read whole from elsewhere: CloudStack, several tables)."""
    size = page_size_of(page_size)
    offset = decode_token(page_token)
    window = list(items[offset : offset + size + 1])
    return window[:size], next_token(offset, size, len(window))
