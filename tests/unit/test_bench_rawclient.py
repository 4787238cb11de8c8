"""The submit bench's lean load client: every request sent once, every answer counted, and
anything it cannot read fails the run instead of being miscounted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench import rawclient


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[bytes]]]:
    seen: list[bytes] = []

    async def accept(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(body)
        # an odd body length and some statuses other than 202, so neither is assumed
        return web.Response(status=202 if len(seen) % 3 else 429, body=b"x" * (len(body) % 7))

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=202)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"part")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/api/tasks", accept)
    app.router.add_post("/chunked", chunked)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_every_body_is_posted_once_and_every_answer_counted(
        server: tuple[str, list[bytes]]) -> None:
    base, seen = server
    bodies = [b'{"prompt": "task %d"}' % i for i in range(500)]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    await rawclient.post_all(base + "/api/tasks", bodies, 7, latencies, statuses)
    assert sorted(seen) == sorted(bodies)
    assert statuses == {"202": 334, "429": 166}
    assert len(latencies) == 500 and min(latencies) > 0


async def test_an_answer_it_cannot_read_fails_the_run(server: tuple[str, list[bytes]]) -> None:
    base, _ = server
    with pytest.raises(rawclient.ProtocolError, match="chunked"):
        await rawclient.post_all(base + "/chunked", [b"{}"] * 3, 2, None, {})
