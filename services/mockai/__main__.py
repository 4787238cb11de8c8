"""`python -m services.mockai`: serve the mock provider until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

import structlog
from aiohttp import web

from shared import logs, metrics
from shared.config import Env, logging_from_env
from shared.metrics import MetricsSettings
from shared.runtime import help_if_asked

from .app import create_app
from .settings import ConfigError, MockSettings

log = structlog.get_logger("mockai")

# Stalled streams can be hours long; a mock has no in-flight work worth waiting for.
SHUTDOWN_TIMEOUT_S = 1.0


SUMMARY = ("The mock OpenAI-compatible provider (tests, benchmarks, `make run`): "
           "/v1/chat/completions on MOCKAI_PORT; /metrics on METRICS_PORT (0: off). A task's "
           "metadata.mock overrides these per task.")


def load(env: Env) -> tuple[MockSettings, MetricsSettings, tuple[str, str]]:
    """Everything the mock reads from the environment (its --help lists it)."""
    return MockSettings.from_env(env), MetricsSettings.from_env(env), logging_from_env(env)


async def serve(settings: MockSettings, metrics_settings: MetricsSettings) -> None:
    async with metrics.serving(metrics_settings, "mockai"):
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
    help_if_asked("services.mockai", SUMMARY, load)
    try:
        settings, metrics_settings, (log_format, log_level) = load(Env())
    except ConfigError as exc:
        print(f"mockai: {exc}", file=sys.stderr)
        return 2
    logs.configure(log_format, log_level, "mockai")
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings, metrics_settings))
    except OSError as exc:  # typically the port is already taken
        print(f"mockai: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
