"""Calls of one script from many tasks of a process, sent together: one pipeline per round trip.

While one pipeline is on its way, the calls that arrive wait and go out together as the next,
as the store's group commit does: under load one round trip carries many tasks' calls (200
streams relaying 50 tokens/s each are 10,000 emits a second), alone a call goes out at once.
A call waits at most for the round trip in flight; when ``GROUP`` calls have gathered meanwhile
they go out at once on a connection of their own (``Lane``). One task's calls, each awaited
before the next, keep their order.

Each caller gets its own reply, or its own exception. A pipeline that fails as a whole (Redis
unreachable) fails every call in it, any of which may have run: callers already treat one failed
call so (see ``shared/redis_conn.py``, why the client never re-sends). A call with an argument
Redis cannot take (None, a bool: a DataError) fails alone; the others of its group are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, NoScriptError

from shared.redis_conn import RedisClient, overrides_of
from shared.redis_fence import Lane


@dataclass(slots=True)
class _Call:
    keys: Sequence[str]
    args: Sequence[Any]
    future: asyncio.Future[Any]


# Calls that, waiting for the round trip in flight, go out at once as a group when this many
# have gathered. With an edge at 50 connections, submits came back and went out together, 48
# at a time, and the edge sat idle (a fifth of its time) while Redis ran them; in groups of
# 24, written as they form, Redis runs one while the edge reads the next: 18% more submits/s
# at 2% more edge CPU per submit (8 alternating runs each).
GROUP = 24
LANE_MIN_POOL = 4  # connections a pool needs for one to be held by a coalescer's lane


class Coalescer:
    """``await coalescer(keys, args)``: the script's reply, as ``script(keys, args)`` gives."""

    def __init__(self, redis: RedisClient, script: AsyncScript, group: int = GROUP) -> None:
        self._redis, self._script = redis, script
        self._group = group
        # a cluster's calls go to their nodes: they wait for the round trip in flight
        # (and a pool too small to spare a connection keeps every one for commands)
        overrides = overrides_of(redis)
        self._lane = (Lane(redis) if isinstance(redis, Redis) and "lane" in overrides
                      and redis.connection_pool.max_connections >= LANE_MIN_POOL else None)
        self._finishers: set[asyncio.Task[None]] = set()  # kept till done
        self._pending: list[_Call] = []
        self._busy = False  # a round trip is on its way (a lone call's or the flusher's)
        # Kept, so it is not collected mid-flight; it settles every call it takes, whatever
        # happens, so no error is left unseen in it.
        self._flusher: asyncio.Task[None] | None = None
        self.round_trips = 0  # pipelines (or single calls) sent

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if not self._busy:
            # Nothing on its way: this call goes at once, from its own task (no hop through
            # the flusher's: a relayed token's latency is mostly such hops).
            self._busy = True
            self.round_trips += 1
            try:
                return await self._script(keys=keys, args=args)
            finally:
                self._hand_over()
        call = _Call(keys, args, asyncio.get_running_loop().create_future())
        self._pending.append(call)
        if len(self._pending) >= self._group and self._lane is not None and self._lane.ready():
            self._send_now()
        return await call.future

    def _hand_over(self) -> None:
        """A round trip came back: the calls that arrived meanwhile go out together."""
        if self._pending:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_all())
        else:
            self._busy = False

    async def _flush_all(self) -> None:
        try:
            while self._pending:
                calls, self._pending = self._pending, []
                try:
                    await self._answer(calls, self._reload_lost(calls, self._send(calls)))
                except asyncio.CancelledError:  # the loop is closing: nobody waits any more
                    for call in self._pending:
                        call.future.cancel()
                    self._pending = []
                    raise
        finally:
            self._busy = False

    def _send_now(self) -> None:
        """The pending calls, a full group, written on the lane at once (see :class:`Lane`):
        a burst of calls goes out in groups while the rest of it is still being read."""
        calls, self._pending = self._pending, []
        self.round_trips += 1
        sha = self._script.sha
        assert self._lane is not None
        # a call with an argument Redis cannot take gets its DataError; the others are sent
        reader = self._lane.send([("EVALSHA", sha, len(c.keys), *c.keys, *c.args)
                                  for c in calls])
        finisher = asyncio.get_running_loop().create_task(self._finish(calls, reader))
        self._finishers.add(finisher)
        finisher.add_done_callback(self._finishers.discard)

    async def _finish(self, calls: list[_Call], reader: asyncio.Task[list[Any]]) -> None:
        await self._answer(calls, self._reload_lost(calls, reader))

    @staticmethod
    async def _answer(calls: list[_Call], replies: Awaitable[list[Any]]) -> None:
        """Each call its reply; every call the error of a round trip that failed whole."""
        try:
            got = await replies
        except asyncio.CancelledError:  # the loop is closing: nobody waits any more
            for call in calls:
                call.future.cancel()
            raise
        except Exception as exc:
            got = [exc] * len(calls)
        _settle(calls, got)

    async def _send(self, calls: list[_Call]) -> list[Any]:
        self.round_trips += 1
        if len(calls) == 1:  # alone: the plain script call
            call = calls[0]
            try:
                return [await self._script(keys=call.keys, args=call.args)]
            except Exception as exc:
                return [exc]
        # EVALSHA itself: a script registered with the pipeline would make it ask SCRIPT
        # EXISTS first, a second round trip every time (a lost script: see _reload_lost).
        # On a cluster the pipeline calls by node. It packs its commands together, so one
        # argument Redis cannot take would fail them all: such a call fails alone.
        if isinstance(self._redis, Redis):
            # One server: the pipeline packs every command before it writes any, so a
            # DataError means nothing was sent, and the group goes again, checked call by
            # call. Checking first, every time, cost 35 encodes a task (~3% of the
            # processor's CPU in the e2e bench) for a failure that does not happen.
            with contextlib.suppress(DataError):
                async with self._redis.pipeline(transaction=False) as p:
                    for call in calls:
                        p.evalsha(self._script.sha, len(call.keys), *call.keys, *call.args)
                    return list(await p.execute(raise_on_error=False))
        return await self._send_checked(calls)

    async def _send_checked(self, calls: list[_Call]) -> list[Any]:
        """The group's calls whose arguments Redis can take, in one pipeline; the others
        their DataError."""
        sha = self._script.sha
        encode = self._redis.get_encoder().encode
        replies: list[Any] = [None] * len(calls)
        sent: list[int] = []
        async with self._redis.pipeline(transaction=False) as p:
            for i, call in enumerate(calls):
                try:
                    for arg in (*call.keys, *call.args):
                        encode(arg)
                except DataError as exc:
                    replies[i] = exc
                    continue
                p.evalsha(sha, len(call.keys), *call.keys, *call.args)
                sent.append(i)
            if sent:
                for i, reply in zip(sent, await p.execute(raise_on_error=False), strict=True):
                    replies[i] = reply
        return replies

    async def _reload_lost(self, calls: list[_Call], sent: Awaitable[list[Any]]) -> list[Any]:
        """The replies of ``sent``, where a script Redis had lost (a restart, a SCRIPT FLUSH)
        is sent again by itself, which loads it."""
        replies = await sent
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                try:
                    replies[i] = await self._script(keys=calls[i].keys, args=calls[i].args)
                except Exception as exc:
                    replies[i] = exc
        return replies


def _settle(calls: list[_Call], replies: list[Any]) -> None:
    for call, reply in zip(calls, replies, strict=True):
        if call.future.done():  # its caller was cancelled
            continue
        if isinstance(reply, Exception):
            call.future.set_exception(reply)
        else:
            call.future.set_result(reply)
