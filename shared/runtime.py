"""Process-level helpers for the long-running services."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from shared import healthcheck
from shared.config import Common, ConfigError, Env

S = TypeVar("S")


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


def healthcheck_if_asked(common: Common, heartbeats: str, role: str, name_variable: str) -> None:
    """``--check``: exit at once with the container healthcheck's verdict (see healthcheck)."""
    if "--check" in sys.argv[1:]:
        sys.exit(healthcheck.check(common.redis_url.get(), heartbeats, role,
                                   Env().optional(name_variable)))
