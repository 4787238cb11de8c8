"""How the edge reads request bodies: compressed bodies (refused, or inflated after the key is
checked and within MAX_BODY_BYTES), a body that trickles in (408), a client that hangs up
mid-body (logged as such), and JSON that Sluice could not carry unchanged (422)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from harness.waiting import until
from tests.integration.edge_client import EdgeUnderTest, running_edge
from tests.integration.test_edge_validation import AUTH, KEY, assert_nothing_stored

MIB = 1 << 20
JSON = {"Content-Type": "application/json"}
BODY = orjson.dumps({"prompt": "hello"})


def bomb(inflated: int) -> bytes:
    """gzip of ``inflated`` zero bytes (whole MiB): about a thousandth of its inflated size.

    Built without deflating a GiB: after a full flush the compressor has forgotten what came
    before, so every further MiB of zeros compresses to the same bytes, which are repeated.
    The trailer's CRC-32 and length are those of the whole inflated body: a valid gzip."""
    out = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * MIB
    first = out.compress(block) + out.flush(zlib.Z_FULL_FLUSH)  # with the gzip header
    unit = out.compress(block) + out.flush(zlib.Z_FULL_FLUSH)
    last_block = out.flush()[:-8]  # the final empty block, less a trailer for 2 MiB
    crc = 0
    for _ in range(inflated // MIB):
        crc = zlib.crc32(block, crc)
    return (first + unit * (inflated // MIB - 1) + last_block
            + struct.pack("<II", crc, inflated & 0xFFFFFFFF))


def test_a_bomb_is_valid_gzip_of_as_many_zeros() -> None:
    assert gzip.decompress(bomb(8 * MIB)) == b"\0" * (8 * MIB)


@pytest.fixture
async def edge(redis_url: str, tmp_path: Path) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=f"{KEY}:alpha") as e:
        yield e


@pytest.fixture
async def inflating_edge(redis_url: str, tmp_path: Path) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=f"{KEY}:alpha",
                            EDGE_ALLOW_COMPRESSED_BODIES="true") as e:
        yield e


COMPRESSED = [("gzip", gzip.compress(BODY)), ("deflate", zlib.compress(BODY)),
              ("gzip", b"\x1f\x8b not gzip at all"), ("br", b"\x0b\x02\x80hello\x03"),
              ("GZIP", gzip.compress(BODY)), ("gzip, gzip", gzip.compress(gzip.compress(BODY)))]


@pytest.mark.parametrize("path", ["/api/tasks", "/v1/chat/completions"])
@pytest.mark.parametrize(("coding", "data"), COMPRESSED,
                         ids=[f"{c}-{i}" for i, (c, _) in enumerate(COMPRESSED)])
async def test_a_compressed_body_is_415_whether_valid_or_not(
        edge: EdgeUnderTest, path: str, coding: str, data: bytes) -> None:
    # A valid gzip body with its Content-Length used to be 400 incomplete_body (aiohttp had
    # inflated it, so fewer or more bytes came than announced), and invalid gzip a 500.
    r = await edge.client.post(path, data=data,
                               headers={**AUTH, **JSON, "Content-Encoding": coding})
    assert r.status == 415, await r.text()
    err = (await r.json())["error"]
    assert err.get("code") == "unsupported_content_encoding", err
    assert r.request_info.headers["Content-Length"] == str(len(data))
    await assert_nothing_stored(edge)


async def test_identity_is_no_compression(edge: EdgeUnderTest) -> None:
    r = await edge.client.post("/api/tasks", data=BODY,
                               headers={**AUTH, **JSON, "Content-Encoding": "identity"})
    assert r.status == 202, await r.text()


async def test_a_bomb_without_a_key_is_401_and_never_inflated(edge: EdgeUnderTest) -> None:
    """The key is checked before the body is read, and aiohttp no longer inflates bodies as
    they arrive: the edge refuses without having read a single inflated byte."""
    data = bomb(256 * MIB)
    assert len(data) < MIB // 2
    r = await edge.client.post("/api/tasks", data=data,
                               headers={**JSON, "Content-Encoding": "gzip"})
    assert r.status == 401
    r = await edge.client.post("/api/tasks", data=data,
                               headers={**AUTH, **JSON, "Content-Encoding": "gzip"})
    assert r.status == 415
    await assert_nothing_stored(edge)


@pytest.mark.parametrize(("coding", "pack"), [("gzip", gzip.compress), ("x-gzip", gzip.compress),
                                              ("deflate", zlib.compress)])
async def test_when_allowed_gzip_and_deflate_are_inflated(
        inflating_edge: EdgeUnderTest, coding: str, pack: object) -> None:
    body = {"prompt": "inflated " * 50, "metadata": {"n": 7}}
    data = pack(orjson.dumps(body))  # type: ignore[operator]
    for payload in (data, _chunks(data, 7)):  # with and without Content-Length
        r = await inflating_edge.client.post(
            "/api/tasks", data=payload, headers={**AUTH, **JSON, "Content-Encoding": coding})
        assert r.status == 202, await r.text()
        task_id = (await r.json())["id"]
        stored = orjson.loads(await inflating_edge.redis.hget(
            f"{{{inflating_edge.prefix}}}:task:{task_id}", "request"))
        assert stored["messages"][0]["content"] == body["prompt"]
        assert stored["metadata"] == body["metadata"]


async def test_when_allowed_max_body_bytes_counts_the_inflated_bytes(
        inflating_edge: EdgeUnderTest) -> None:
    limit = inflating_edge.settings.max_body_bytes
    near = orjson.dumps({"prompt": "x" * (limit - 100)})
    over = orjson.dumps({"prompt": "x" * (limit + 1)})
    assert len(gzip.compress(over)) < limit // 100
    r = await inflating_edge.client.post("/api/tasks", data=gzip.compress(near), headers={
        **AUTH, **JSON, "Content-Encoding": "gzip"})
    assert r.status == 422  # read whole (the prompt is then too long for MAX_TEXT_CHARS)
    for data in (gzip.compress(over), bomb(1024 * MIB)):
        r = await inflating_edge.client.post("/api/tasks", data=data, headers={
            **AUTH, **JSON, "Content-Encoding": "gzip"})
        assert r.status == 413, await r.text()
        assert (await r.json())["error"]["code"] == "body_too_large"
    await assert_nothing_stored(inflating_edge)


@pytest.mark.parametrize("data", [b"\x1f\x8b not gzip", gzip.compress(BODY)[:-6],
                                  gzip.compress(BODY) + b"trailing", b""],
                         ids=["not-gzip", "truncated", "trailing", "empty"])  # gzip has a time
async def test_when_allowed_broken_compression_is_400(
        inflating_edge: EdgeUnderTest, data: bytes) -> None:
    r = await inflating_edge.client.post("/api/tasks", data=data, headers={
        **AUTH, **JSON, "Content-Encoding": "gzip"})
    assert r.status == 400, await r.text()
    assert (await r.json())["error"]["code"] == "invalid_content_encoding"
    r = await inflating_edge.client.post("/api/tasks", data=gzip.compress(BODY), headers={
        **AUTH, **JSON, "Content-Encoding": "br"})
    assert r.status == 415  # allowed means gzip and deflate
    await assert_nothing_stored(inflating_edge)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def _raw_request(edge: EdgeUnderTest, head: bytes
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    server = edge.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def test_a_body_that_trickles_in_is_cut_with_408(redis_url: str, tmp_path: Path) -> None:
    async with running_edge(redis_url, tmp_path, EDGE_BODY_TIMEOUT_S="0.25") as edge:
        reader, writer = await _raw_request(
            edge, b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        try:
            async def trickle() -> None:
                while True:  # never idle, but 100 bytes would take 10 s: far beyond the time-out
                    await asyncio.sleep(0.1)
                    writer.write(b" ")
                    await writer.drain()
            sender = asyncio.create_task(trickle())
            try:
                status_line = await asyncio.wait_for(reader.readline(), 30)
                assert status_line.startswith(b"HTTP/1.1 408"), status_line
                head = await reader.readuntil(b"\r\n\r\n")
                assert b"Connection: close" in head
            finally:
                sender.cancel()
        finally:
            writer.close()
        await assert_nothing_stored(edge)


async def test_a_client_hanging_up_mid_body_is_logged_as_such(edge: EdgeUnderTest) -> None:
    with capture_logs() as logs:
        _reader, writer = await _raw_request(
            edge, b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"prompt\": ")
        writer.close()  # 11 bytes of 1000, and gone
        await writer.wait_closed()
        # The summary line comes when the handler has finished.
        await until(lambda: any(e["event"] == "request" for e in logs), 5,
                    "the request's summary line")
    events = [e["event"] for e in logs]
    assert "client_disconnected" in events, logs
    assert "redis_unavailable" not in events and "unhandled_error" not in events, logs
    [summary] = [e for e in logs if e["event"] == "request"]
    assert summary["status"] == 499
    await assert_nothing_stored(edge)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("path", ["/api/tasks", "/v1/chat/completions"])
@pytest.mark.parametrize("depth", [250, 600, 1000])
async def test_json_nested_too_deep_anywhere_is_422_naming_the_field(
        edge: EdgeUnderTest, path: str, depth: int) -> None:
    # Inside an extra key of a content part: a member no schema looks at (it used to be 500:
    # orjson writes at most 254 levels back, and the task is written back as JSON).
    body = ('{"model": "mock-r1", "messages": [{"role": "user", "content": [{"type": "text", '
            '"text": "hi", "extra": ' + _nested(depth) + '}]}]}').encode()
    r = await edge.client.post(path, data=body, headers={**AUTH, **JSON})
    assert r.status == 422, await r.text()
    error = (await r.json())["error"]
    where = error.get("field") or error.get("param")
    assert where == "messages[0].content[0].extra", error
    assert "nested deeper than" in error["message"]
    await assert_nothing_stored(edge)


async def test_json_nested_within_the_limit_is_not_refused_for_depth(
        edge: EdgeUnderTest) -> None:
    body = orjson.dumps({"prompt": "hi", "metadata": {"a": [[[[["deep enough"]]]]]}})
    r = await edge.client.post("/api/tasks", data=body, headers={**AUTH, **JSON})
    assert r.status == 202, await r.text()


async def test_a_whole_body_nested_too_deep_is_422(edge: EdgeUnderTest) -> None:
    r = await edge.client.post("/api/tasks", data=_nested(900).encode(),
                               headers={**AUTH, **JSON})
    assert r.status == 422, await r.text()
    assert "nested deeper than" in (await r.json())["error"]["message"]
    await assert_nothing_stored(edge)


async def test_an_empty_body_says_so(edge: EdgeUnderTest) -> None:
    reader, writer = await _raw_request(
        edge, b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 0\r\n\r\n")
    try:
        status_line = await asyncio.wait_for(reader.readline(), 30)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        error = orjson.loads(await reader.readexactly(length))["error"]
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 400"), status_line
    assert error == {"code": "empty_body", "message": "the body is empty: send a JSON object"}
    await assert_nothing_stored(edge)


async def test_a_client_hanging_up_mid_body_leaves_no_error_and_no_traceback(
        edge: EdgeUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        _reader, writer = await _raw_request(
            edge, b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"prompt\": ")
        writer.close()
        await writer.wait_closed()
        for _ in range(500):  # aiohttp's access line comes once the request is done with
            if any(r.name == "aiohttp.access" for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    [gone] = [e for e in logs if e["event"] == "client_disconnected"]
    assert gone["log_level"] == "info" and "exc_info" not in gone
    loud = [(r.name, r.levelname, r.getMessage()) for r in caplog.records
            if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == [], loud
