"""JSON answers: every handler's ``web.Response`` with a JSON body."""

from __future__ import annotations

import orjson
from aiohttp import web


def json_bytes(body: object) -> bytes:
    """``body`` as JSON, in bytes of its own size. orjson hands back its output in a buffer of
    at least 4 KiB that it never shrinks, and aiohttp keeps a keep-alive connection's last
    response until the next one is done: every open connection would hold 4 KiB for an
    answer of 50 bytes. The copy costs ~0.1 µs."""
    return bytes(memoryview(orjson.dumps(body)))


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(status=status, body=json_bytes(body), content_type="application/json",
                        headers=headers)
