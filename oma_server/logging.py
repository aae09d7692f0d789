"""Loguru set-up: readable lines on a terminal, JSON lines with --log-json. Ids are bound with logger.bind()."""

from __future__ import annotations

import logging
import sys
from typing import Any

from loguru import logger

_TEXT_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> <cyan>{name}</cyan> {message}{extra[_ctx]}"
)


# Ids bound with logger.bind() that a reader of a terminal log wants on every line; JSON lines carry all extras.
CONTEXT_KEYS = (
    "appliance_id",
    "session_id",
    "vm_context_id",
    "job_id",
    "disk_id",
    "volume_id",
    "export",
    "command_id",
    "rpc",
    "reason",
    "error_id",
)


def _context_patcher(record: Any) -> None:
    extra = record["extra"]
    record["extra"]["_ctx"] = "".join(f" {k}={extra[k]}" for k in CONTEXT_KEYS if k in extra)


class _InterceptHandler(logging.Handler):
    """Routes stdlib logging (aiohttp, asyncio, grpc) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(*, json: bool = False, level: str = "INFO") -> None:
    logger.remove()
    logger.configure(patcher=_context_patcher)
    if json:
        logger.add(sys.stderr, level=level, serialize=True, enqueue=False)
    else:
        logger.add(sys.stderr, level=level, format=_TEXT_FORMAT, colorize=sys.stderr.isatty())
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
