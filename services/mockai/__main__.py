"""`python -m services.mockai`: serve the mock provider until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

import structlog
from aiohttp import web

from shared import logs, metrics
from shared.config import Common, Env
from shared.metrics import MetricsSettings

from .app import create_app
from .settings import ConfigError, MockSettings

log = structlog.get_logger("mockai")

# Stalled streams can be hours long; a mock has no in-flight work worth waiting for.
SHUTDOWN_TIMEOUT_S = 1.0


async def serve(settings: MockSettings) -> None:
    async with metrics.serving(MetricsSettings.from_env(Env()), "mockai"):
        await _serve(settings)


async def _serve(settings: MockSettings) -> None:
    runner = web.AppRunner(
        create_app(settings),
        # Cancel the handler as soon as the client disconnects, so disconnects are
        # recorded at once (see app.py) and abandoned slow streams stop costing CPU.
        handler_cancellation=True,
        # One access-log line per request would cost more than generating the answer.
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            # Lets several mock processes share a port to spread benchmark load.
            reuse_port=True,
            backlog=4096,
        )
        await site.start()
        # Report the bound port: with MOCKAI_PORT=0 the OS picks it.
        addresses = [f"{a[0]}:{a[1]}" for a in runner.addresses if isinstance(a, tuple)]
        log.info(
            "mockai.listening",
            addresses=addresses,
            model=settings.model,
            auth=settings.api_key is not None,
            no_stream=settings.no_stream,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # optional speed-up (e.g. not installable on Windows)
        return None
    return uvloop.new_event_loop


def main() -> int:
    try:
        settings = MockSettings.from_env()
    except ConfigError as exc:
        print(f"mockai: {exc}", file=sys.stderr)
        return 2
    common = Common.from_env(Env())
    logs.configure(common.log_format, common.log_level)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings))
    except OSError as exc:  # typically the port is already taken
        print(f"mockai: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
