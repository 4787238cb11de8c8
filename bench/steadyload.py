"""The steady-load client: ``python -m bench.steadyload`` runs N closed-loop clients, each
sending its next request when its last one has ended, and prints one JSON object.

Two shapes of a request, each timed whole (first byte sent to the end of the last answer):

* ``v1``: ``POST /v1/chat/completions`` with ``stream: true``, read to the end of its chunked
  SSE body, which must carry ``data: [DONE]`` (the same against the mock direct and the edge);
* ``tasks``: ``POST /api/tasks`` (a 202 with the task's id), then on the same connection
  ``GET /api/tasks/{id}/events``, read to the end of its body, which must carry the terminal
  ``event: done``.

Like ``bench.rawclient``, it writes prepared bytes on keep-alive connections and reads only
what it needs (status, Content-Length or chunk sizes, the terminal marker), so its own CPU
stays small beside the services'; it reports that CPU apart. Anything it cannot read fails the
run; an answer without its terminal marker counts as ``bad``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import cast
from urllib.parse import urlsplit

import orjson

from bench.loadgen import loop_factory
from bench.stats import summary

MODEL = "mock-r1"
DONE = {"v1": b"data: [DONE]", "tasks": b"event: done"}


class ProtocolError(RuntimeError):
    """The server answered something this client does not read."""


class Answer:
    """One HTTP/1.1 answer read incrementally: a Content-Length or a chunked body."""

    def __init__(self) -> None:
        self.status = -1
        self.body = bytearray()
        self._length = -1  # Content-Length, or -1 when chunked
        self._chunk = -1  # bytes left in the current chunk (+ its CRLF), -1: a size line next
        self._last = False

    def feed(self, buf: bytearray) -> bool:
        """Consume what ``buf`` holds of this answer; True once the answer is whole."""
        if self.status < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            self._head(bytes(buf[:end]))
            del buf[:end + 4]
        if self._length >= 0:
            if len(buf) < self._length:
                return False
            self.body += buf[:self._length]
            del buf[:self._length]
            return True
        return self._chunks(buf)

    def _head(self, head: bytes) -> None:
        self.status = int(head[9:12])
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.strip().lower() == b"chunked"
        if self._length < 0 and not chunked:
            raise ProtocolError("an answer with neither Content-Length nor chunks")

    def _chunks(self, buf: bytearray) -> bool:
        while True:
            if self._last:  # after the zero-size chunk: no trailers, one empty line
                if len(buf) < 2:
                    return False
                del buf[:2]
                return True
            if self._chunk < 0:
                nl = buf.find(b"\r\n")
                if nl < 0:
                    return False
                size = int(bytes(buf[:nl]).split(b";")[0], 16)
                del buf[:nl + 2]
                self._last, self._chunk = size == 0, size
                continue
            if len(buf) < self._chunk + 2:
                return False
            self.body += buf[:self._chunk]
            del buf[:self._chunk + 2]
            self._chunk = -1


class _Run:
    """What the connections share: requests left to start, the counts, the end."""

    def __init__(self, mode: str, url: str, n: int, record: bool) -> None:
        u = urlsplit(url)
        self.mode, self.host, self.n = mode, u.netloc, n
        self.todo, self.pending = n, n
        self.record = record
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.bad = 0
        self.nonce = f"{time.time_ns():x}"
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fail(self, exc: Exception) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc)

    def first(self, i: int) -> bytes:
        """The request that starts request ``i``."""
        if self.mode == "v1":
            path = "/v1/chat/completions"
            body = orjson.dumps({"model": MODEL, "stream": True, "messages": [
                {"role": "user", "content": f"steady {self.nonce} {i}"}]})
        else:
            path = "/api/tasks"
            body = orjson.dumps({"prompt": f"steady {self.nonce} {i}"})
        return (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    def events(self, task_id: str) -> bytes:
        return (f"GET /api/tasks/{task_id}/events HTTP/1.1\r\nHost: {self.host}\r\n"
                "Accept: text/event-stream\r\n\r\n").encode()


class _Conn(asyncio.Protocol):
    """One closed-loop client: a whole request, then the next, until none are left."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._buf = bytearray()
        self._answer = Answer()
        self._submitted = False  # tasks: the POST is answered, the events are being read
        self._started = 0.0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._next()

    def _next(self) -> None:
        run = self._run
        if run.todo and self._transport is not None:
            run.todo -= 1
            self._started = time.perf_counter()
            self._submitted = False
            self._transport.write(run.first(run.todo))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            while self._answer.feed(self._buf):
                answer, self._answer = self._answer, Answer()
                self._answered(answer)
        except (ProtocolError, ValueError, KeyError) as e:
            self._run.fail(ProtocolError(f"unreadable answer: {e}"))

    def _answered(self, answer: Answer) -> None:
        run = self._run
        if run.mode == "tasks" and not self._submitted and answer.status == 202:
            self._submitted = True
            assert self._transport is not None
            self._transport.write(run.events(orjson.loads(answer.body)["id"]))
            return
        if run.record:
            run.latencies.append((time.perf_counter() - self._started) * 1000)
            run.statuses[str(answer.status)] = run.statuses.get(str(answer.status), 0) + 1
            if DONE[run.mode] not in answer.body:
                run.bad += 1
        run.pending -= 1
        if run.pending == 0 and not run.finished.done():
            run.finished.set_result(None)
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._run.pending:
            self._run.fail(exc or ProtocolError("the server closed a connection"))


async def closed_loop(mode: str, url: str, n: int, conns: int, record: bool = True) -> _Run:
    """``n`` requests from ``conns`` closed-loop clients; the run's counts and latencies."""
    run = _Run(mode, url, n, record)
    if n == 0:
        return run
    u = urlsplit(url)
    loop = asyncio.get_running_loop()
    made = [await loop.create_connection(lambda: _Conn(run), u.hostname or "127.0.0.1",
                                         u.port or 80)
            for _ in range(min(conns, n))]
    try:
        await run.finished
    finally:
        for transport, _ in made:
            transport.close()
    return run


async def _main(mode: str, url: str, n: int, conns: int, warmup: int) -> dict[str, object]:
    await closed_loop(mode, url, warmup, conns, record=False)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run = await closed_loop(mode, url, n, conns)
    elapsed = time.perf_counter() - wall0
    return {"mode": mode, "n": n, "conns": conns, "statuses": run.statuses, "bad": run.bad,
            "elapsed_s": round(elapsed, 4), "rate": round(n / elapsed, 1),
            "latency_ms": summary(run.latencies, 3),
            "cpu_s": round(time.process_time() - cpu0, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=tuple(DONE), required=True)
    ap.add_argument("--url", required=True, help="the base URL (the edge's or the mock's)")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--conns", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=0)
    a = ap.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        out = runner.run(_main(a.mode, a.url, a.n, a.conns, a.warmup))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()
