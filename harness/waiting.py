"""Waiting on a condition instead of sleeping a fixed time: one helper for synchronous code,
one for asyncio, with the same arguments and the same rules.

- ``predicate()`` is called until it returns something truthy, which is returned;
- an exception it raises means "not yet" (a process still starting refuses connections, a
  record is not there yet) and is quoted in the failure if the wait runs out;
- after ``within_s`` seconds the wait fails with an ``AssertionError`` naming ``what`` was
  awaited, so a failed test says which condition never came;
- ``interval``: the pause between two calls (0 for the async one: one event-loop turn).

The async helper also takes a predicate that returns an awaitable (an ``async def``), and its
``within_s`` bounds a call that hangs too.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


def _timed_out(within_s: float, what: str, last_exc: Exception | None) -> AssertionError:
    return AssertionError(f"timed out after {within_s}s waiting for {what}"
                          + (f" (last error: {last_exc!r})" if last_exc else ""))


def wait_for(predicate: Callable[[], T], within_s: float, what: str, *,
             interval: float = 0.02) -> T:
    """Call ``predicate`` until it returns a truthy value, and return it."""
    deadline = time.monotonic() + within_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # reported if the wait fails
            last_exc = exc
        time.sleep(interval)
    raise _timed_out(within_s, what, last_exc)


@overload
async def until(predicate: Callable[[], Awaitable[T]], within_s: float, what: str, *,
                interval: float = ...) -> T: ...
@overload
async def until(predicate: Callable[[], T], within_s: float, what: str, *,
                interval: float = ...) -> T: ...
async def until(predicate: Callable[[], object], within_s: float, what: str, *,
                interval: float = 0.01) -> object:
    """Call (and await) ``predicate`` until it returns a truthy value, and return it."""
    last_exc: Exception | None = None
    try:
        async with asyncio.timeout(within_s):
            while True:
                try:
                    value = predicate()
                    if inspect.isawaitable(value):
                        value = await value
                    if value:
                        return value
                except Exception as exc:  # reported if the wait fails
                    last_exc = exc
                await asyncio.sleep(interval)
    except TimeoutError:
        raise _timed_out(within_s, what, last_exc) from None
