"""A lean HTTP/1.1 load client: keep-alive connections, one request in flight on each.

The submit scenario measures one edge on a 2-core machine, and its load process shares those
cores: aiohttp's client spends about 0.07 ms of CPU per request, close to what the edge
itself spends, so most of what it measured was the two fighting for the cores. Real clients
run elsewhere. This client writes prepared request bytes and reads each answer's status line
and Content-Length, nothing else: the role ``wrk`` plays in HTTP benchmarks, kept in Python so
that ``make bench`` needs nothing more on a fresh machine. It speaks only what our edge
answers (Content-Length bodies, no chunking) and fails loudly on anything else.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast
from urllib.parse import urlsplit


class ProtocolError(RuntimeError):
    """The server answered something this client does not read."""


class _Run:
    """What the connections share: the requests left, the counts, the end."""

    def __init__(self, todo: list[bytes], latencies: list[float] | None,
                 statuses: dict[str, int]) -> None:
        loop = asyncio.get_running_loop()
        self.todo = todo
        self.pending = len(todo)
        self.latencies = latencies
        self.statuses = statuses
        self.finished: asyncio.Future[None] = loop.create_future()

    def fail(self, exc: Exception) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc)


class _Conn(asyncio.Protocol):
    """One connection: sends a request, reads the whole answer, sends the next."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._buf = bytearray()
        self._need = -1  # bytes of the whole answer, once its head is in
        self._started = 0.0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send_next()

    def _send_next(self) -> None:
        if self._run.todo and self._transport is not None:
            self._started = time.perf_counter()
            self._transport.write(self._run.todo.pop())

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            while self._answer_in():
                pass
        except (ProtocolError, ValueError) as e:
            self._run.fail(ProtocolError(f"unreadable answer: {e}"))

    def _answer_in(self) -> bool:
        if self._need < 0:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            self._need = end + 4 + _content_length(bytes(self._buf[:end]))
        if len(self._buf) < self._need:
            return False
        status = int(self._buf[9:12])
        del self._buf[:self._need]
        self._need = -1
        self._done(status)
        return True

    def _done(self, status: int) -> None:
        run = self._run
        if run.latencies is not None:
            run.latencies.append((time.perf_counter() - self._started) * 1000)
        run.statuses[str(status)] = run.statuses.get(str(status), 0) + 1
        run.pending -= 1
        if run.pending == 0 and not run.finished.done():
            run.finished.set_result(None)
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._run.pending:
            self._run.fail(exc or ProtocolError("the server closed a connection"))


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
        if name.strip().lower() == b"transfer-encoding":
            raise ProtocolError("chunked answers are not read by this client")
    raise ProtocolError("an answer without Content-Length")


def request_bytes(url: str, body: bytes) -> bytes:
    u = urlsplit(url)
    return (f"POST {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


async def post_all(url: str, bodies: list[bytes], conns: int,
                   latencies: list[float] | None, statuses: dict[str, int]) -> None:
    """POST every body, ``conns`` at a time, each connection kept alive throughout."""
    if not bodies:
        return
    u = urlsplit(url)
    loop = asyncio.get_running_loop()
    run = _Run([request_bytes(url, b) for b in reversed(bodies)], latencies, statuses)
    made = [await loop.create_connection(lambda: _Conn(run), u.hostname or "127.0.0.1",
                                             u.port or 80)
            for _ in range(min(conns, len(bodies)))]
    try:
        await run.finished
    finally:
        for transport, _ in made:
            transport.close()
