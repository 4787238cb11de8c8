"""A redis-server put to sleep (``DEBUG SLEEP``): alive, its sockets open, answering nothing.

The server must run with ``--enable-debug-command local``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from harness.processes import RedisServer


@contextlib.contextmanager
def debug_redis(folder: Path) -> Iterator[RedisServer]:
    """A redis-server of its own that takes DEBUG commands, killed after the block."""
    server = RedisServer(folder, extra_args=["--enable-debug-command", "local"])
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def put_to_sleep(server: RedisServer, seconds: float) -> asyncio.StreamWriter:
    """Send DEBUG SLEEP and return once Redis is asleep: a PING on another connection, which
    Redis answers at once when awake, stays unanswered. Close the writer returned after."""
    _r, sleeper = await asyncio.open_connection("127.0.0.1", server.port)
    reader, prober = await asyncio.open_connection("127.0.0.1", server.port)
    sleeper.write(f"DEBUG SLEEP {seconds}\r\n".encode())
    await sleeper.drain()
    while True:
        prober.write(b"PING\r\n")
        await prober.drain()
        try:
            await asyncio.wait_for(reader.readline(), 0.5)
        except TimeoutError:
            prober.close()
            return sleeper
