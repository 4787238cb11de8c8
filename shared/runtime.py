"""Process-level helpers for the long-running services."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


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
