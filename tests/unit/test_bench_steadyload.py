"""The steady bench's closed-loop client: every request made once and read to its end,
chunked bodies read however the bytes are cut, an answer without its terminal event counted
as bad, and the task path's event stream read on the id its submit answered."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench import steadyload


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_an_answer_is_read_whole_however_its_bytes_are_cut() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = [b"data: {\"n\": %d}\n\n" % i for i in range(5)] + [b"data: [DONE]\n\n"]
    wire = head + _chunked(parts) + b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}"
    for cut in (1, 2, 3, 7, 64, len(wire)):
        buf, answers, answer = bytearray(), [], steadyload.Answer()
        for i in range(0, len(wire), cut):
            buf += wire[i:i + cut]
            while answer.feed(buf):
                answers.append(answer)
                answer = steadyload.Answer()
        assert [(a.status, bytes(a.body)) for a in answers] == [
            (200, b"".join(parts)), (202, b"{}")], cut
        assert not buf


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, list[str]]]]:
    seen: dict[str, list[str]] = {"chat": [], "tasks": [], "events": []}

    async def stream(request: web.Request, parts: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for p in parts:
            await resp.write(p)
        await resp.write_eof()
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        prompt = (await request.json())["messages"][0]["content"]
        seen["chat"].append(prompt)
        # every fifth answer ends without [DONE]: the client must count it bad
        done = [] if len(seen["chat"]) % 5 == 0 else [b"data: [DONE]\n\n"]
        return await stream(request, [b"data: {}\n\n"] * 3 + done)

    async def submit(request: web.Request) -> web.Response:
        seen["tasks"].append((await request.json())["prompt"])
        return web.json_response({"id": f"t{len(seen['tasks'])}"}, status=202)

    async def events(request: web.Request) -> web.StreamResponse:
        seen["events"].append(request.match_info["id"])
        return await stream(request, [b"event: status\ndata: {}\n\n",
                                      b"event: done\ndata: {}\n\n"])

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/api/tasks", submit)
    app.router.add_get("/api/tasks/{id}/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


async def test_each_v1_request_is_made_once_and_the_unfinished_counted_bad(
        server: tuple[str, dict[str, list[str]]]) -> None:
    base, seen = server
    run = await steadyload.closed_loop("v1", base, 100, 7)
    assert len(set(seen["chat"])) == len(seen["chat"]) == 100
    assert run.statuses == {"200": 100} and run.bad == 20
    assert len(run.latencies) == 100


async def test_a_task_request_reads_the_events_of_the_task_it_submitted(
        server: tuple[str, dict[str, list[str]]]) -> None:
    base, seen = server
    run = await steadyload.closed_loop("tasks", base, 60, 4)
    assert len(set(seen["tasks"])) == 60
    assert sorted(seen["events"]) == sorted(f"t{i}" for i in range(1, 61))
    assert run.statuses == {"200": 60} and run.bad == 0
    assert len(run.latencies) == 60
