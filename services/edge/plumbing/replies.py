"""JSON answers: every handler's ``web.Response`` with a JSON body, in bytes of its own size:
aiohttp keeps a keep-alive connection's last response until the next one is done, so every
open connection would hold orjson's 4 KiB buffer for an answer of 50 bytes (see
shared/jsonbytes.py)."""

from __future__ import annotations

from aiohttp import web

from shared import jsonbytes


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(status=status, body=jsonbytes.dumps(body), content_type="application/json",
                        headers=headers)
