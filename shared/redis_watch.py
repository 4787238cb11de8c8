"""A Redis that stops answering, found by one probe per process instead of a timer per command.

redis-py bounds every command of a client with ``socket_timeout`` by a timer per reply read
and, on Python 3.11, a task per write (``asyncio.wait_for``): in the e2e bench that was a
tenth of the processor's CPU per task (0.68 against 0.61 ms, alternating runs). A client of
:func:`watched` has no per-command timeout. What bounds its commands instead:

- The probe: a connection of its own that PINGs Redis every ``every_s``. When a PING is not
  answered within ``timeout_s``, or fails (Redis hung in a long script or ``DEBUG SLEEP``, its
  host stopped, the network cut), every connection of the client is closed, in use or idle:
  each command waiting on one fails with redis-py's ``ConnectionError``, one of
  :data:`shared.redis_conn.UNAVAILABLE`, as a timed-out command failed before. A command waits
  for an answer at most about ``timeout_s + every_s``, as long as its timeout let it.
- The kernel, per socket: TCP keepalive and ``TCP_USER_TIMEOUT`` close a connection whose
  peer is gone (a NAT that dropped it, a half-open socket) though the probe's own still works.

On a Redis Cluster the client keeps its per-command timeout: one probe would watch one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from shared import logs
from shared.redis_conn import (
    SOCKET_TIMEOUT_S,
    UNAVAILABLE,
    RedisClient,
    Url,
    connect,
    is_cluster_url,
    url_text,
)

log = logs.get("sluice.redis")

EVERY_S = 1.0  # how often the probe asks; each PING costs Redis and us a few microseconds


def keepalive(timeout_s: float) -> dict[int, int]:
    """Socket options that have the kernel close a connection to a vanished peer: probes after
    5 s of silence, and data unacknowledged for ``timeout_s`` (Linux's TCP_USER_TIMEOUT)."""
    options = {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3}
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        options[socket.TCP_USER_TIMEOUT] = int(timeout_s * 1000)
    return options


@contextlib.asynccontextmanager
async def watched(redis_url: Url, *, timeout_s: float = SOCKET_TIMEOUT_S,
                  every_s: float = EVERY_S, **options: Any) -> AsyncIterator[RedisClient]:
    """A client of :func:`shared.redis_conn.connect` (``options`` as it takes them) whose
    commands are bounded by the probe, running while the block runs; closed after it. The
    probe asks every ``every_s``, or four times per ``timeout_s`` when that is shorter."""
    every_s = min(every_s, timeout_s / 4)
    if is_cluster_url(url_text(redis_url)):
        redis = connect(redis_url, socket_timeout=timeout_s, **options)
        try:
            yield redis
        finally:
            await redis.aclose()
        return
    redis = connect(redis_url, socket_timeout=None, keepalive=keepalive(timeout_s), **options)
    probe = connect(redis_url, max_connections=1, socket_timeout=timeout_s)
    assert isinstance(redis, Redis)
    stop = asyncio.Event()
    # Stopped by the event, not cancelled: redis-py can take a cancellation that meets its own
    # timeout for that timeout, and the probe would go on.
    prober = asyncio.get_running_loop().create_task(_probe(redis, probe, every_s, stop))
    try:
        yield redis
    finally:
        stop.set()
        await prober  # at most its PING's timeout
        await probe.aclose()
        await redis.aclose()


async def _probe(redis: Redis, probe: RedisClient, every_s: float, stop: asyncio.Event
                 ) -> None:
    answering = True
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
            return
        try:
            await probe.ping()
        except UNAVAILABLE as exc:
            if answering:
                log.warning("redis_not_answering", error=repr(exc),
                            action="closing the connections its commands wait on")
            answering = False
            # Each waiting command fails now (its reader sees the socket closed), as it
            # would have failed at its own timeout; new commands connect anew.
            with contextlib.suppress(*UNAVAILABLE):
                await redis.connection_pool.disconnect(inuse_connections=True)
            continue
        if not answering:
            log.info("redis_answering_again")
        answering = True
