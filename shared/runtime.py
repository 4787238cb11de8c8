"""Process-level helpers for the long-running services."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Coroutine
from contextvars import Context
from types import TracebackType
from typing import Any, TypeVar

from shared import healthcheck, logs
from shared.config import Common, ConfigError, Env, mask_url

S = TypeVar("S")
T = TypeVar("T")
log = logs.get("sluice.runtime")
# How long a service that hit a fatal error may take to stop cleanly before it is killed.
ABORT_GRACE_S = 5.0
_armed = threading.Lock()
_in_service = False  # set by run_service: only a service's own process may be hard-exited


class Refusal(Exception):
    """A reason not to start, said in one line (the process exits with status 2)."""


def refuse(service: str, exc: Refusal) -> None:
    log.error("refused_to_start", service=service, reason=str(exc))
    print(f"sluice {service}: {exc}", file=sys.stderr)
    sys.exit(2)


def exit_soon(reason: str, grace_s: float = ABORT_GRACE_S) -> None:
    """Hard-exit the process (status 1) in ``grace_s`` unless it has ended by then.

    A thread, not a task: it fires however stuck the event loop is (a cancellation swallowed
    by a library, a thread blocked on a file). A service that cannot go on must die so that
    its supervisor restarts it, never linger without its heartbeat."""
    if not _in_service or not _armed.acquire(blocking=False):
        return  # in a test's process (burst mode), or armed already

    def fire() -> None:
        log.critical("hard_exit", reason=reason, after_s=grace_s)
        sys.stdout.flush()
        os._exit(1)

    timer = threading.Timer(grace_s, fire)
    timer.daemon = True
    timer.start()


def _on_task_done(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("service_task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
        exit_soon(f"task {task.get_name()} failed: {exc!r}")


class ServiceGroup(asyncio.TaskGroup):
    """The ``TaskGroup`` a service runs in, whose abort is bounded: once a task fails (or the
    body raises), the error is logged at once and :func:`exit_soon` is armed, so a task that
    ignores its cancellation cannot keep a broken process alive."""

    def create_task(self, coro: Coroutine[Any, Any, T], *,  # type: ignore[override]
                    name: str | None = None, context: Context | None = None
                    ) -> asyncio.Task[T]:
        task = super().create_task(coro, name=name, context=context)
        task.add_done_callback(_on_task_done)
        return task

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            log.error("service_failed", error=repr(exc), exc_info=exc)
            exit_soon(f"service failed: {exc!r}")
        await super().__aexit__(et, exc, tb)


def run_service(service: str, main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``; an error that ends it is logged and the process exits with 1
    (within :data:`ABORT_GRACE_S` even if clean-up hangs)."""
    global _in_service
    _in_service = True
    try:
        asyncio.run(main)
    except Refusal as exc:
        refuse(service, exc)
    except Exception as exc:
        log.critical("service_exiting", service=service, error=repr(exc), exc_info=exc)
        exit_soon(f"{service} failed: {exc!r}")
        sys.exit(1)


# The young generation's threshold: ten times CPython's 700. A service allocates container
# objects by the thousand per second (requests, replies, frames of coroutines), almost all
# freed by reference counting; at 700 the collector ran every few tasks and, with the older
# generations' thresholds, walked the whole heap often. Measured on the e2e bench: 4-5% less
# CPU per task in every service together, the same with 2,000 or 100,000 (noise).
GC_YOUNG = 7000
GC_OLDER = 20


def tune_gc() -> None:
    """Once the service has imported everything: what exists now lives as long as the
    process, so the collector stops walking it (``gc.freeze``), and it runs less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, GC_OLDER, GC_OLDER)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def on_stop_signals(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGTERM or SIGINT (a container stop, Ctrl-C)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


def settings_or_exit(service: str, load: Callable[[], S]) -> S:
    """The service's settings, or a one-line error naming the variable and exit status 2."""
    try:
        return load()
    except ConfigError as exc:
        print(f"sluice {service}: {exc}", file=sys.stderr)
        sys.exit(2)


def help_if_asked(command: str, summary: str, load: Callable[[Env], object],
                  argv: list[str] | None = None) -> None:
    """``--help`` (or ``-h``): print the settings ``load`` reads, each variable with its default
    and its value now (a secret as ``***``, a URL without its password), and exit 0 before
    anything starts. The list is what ``load`` asked the environment for, not a copy of it."""
    args = sys.argv[1:] if argv is None else argv
    if "--help" not in args and "-h" not in args:
        return
    print(settings_help(command, summary, load))
    sys.exit(0)


def settings_help(command: str, summary: str, load: Callable[[Env], object]) -> str:
    defaults = Env({})
    load(defaults)  # every variable, with its default (nothing is set in an empty environment)
    now, problem = Env(), None
    try:
        load(now)
    except ConfigError as exc:
        problem = str(exc)
    names = list(dict.fromkeys([*defaults.reads, *now.reads]))
    rows = []
    for name in names:
        read, value = defaults.reads.get(name) or now.reads[name], now.raw(name)
        shown = "" if value is None else "***" if read.secret else mask_url(value)
        rows.append((name, read.default or "-", shown))
    width = max(len(n) for n, _d, _v in rows) + 2
    dwidth = min(max(len(d) for _n, d, _v in rows), 40) + 2
    lines = [f"usage: python -m {command} [--help]", "", textwrap.fill(summary, 88), "",
             "Settings, read once from the environment at start-up (secrets show as ***):", "",
             f"  {'VARIABLE':<{width}}{'DEFAULT':<{dwidth}}SET NOW"]
    lines += [f"  {n:<{width}}{d:<{dwidth}}{v}".rstrip() for n, d, v in rows]
    if problem is not None:
        lines += ["", f"As set now, it would refuse to start: {problem}"]
    return "\n".join(lines)


def healthcheck_if_asked(common: Common, heartbeats: str, role: str, name_variable: str) -> None:
    """``--check``: exit at once with the container healthcheck's verdict (see healthcheck)."""
    if "--check" in sys.argv[1:]:
        sys.exit(healthcheck.check(common.redis_url.get(), heartbeats, role,
                                   Env().optional(name_variable)))
