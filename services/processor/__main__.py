"""``python -m services.processor``"""

from __future__ import annotations

import asyncio
import sys

from services.processor.settings import ProcessorSettings
from services.processor.worker import Processor, make_http
from shared import healthcheck, logs, redis_conn
from shared.config import ConfigError, Env, describe
from shared.keys import Keys
from shared.runtime import install_uvloop, on_stop_signals
from shared.store import Store


async def serve(settings: ProcessorSettings) -> None:
    redis = redis_conn.connect(settings.common.redis_url, wait=True,
                               max_connections=min(settings.concurrency + 32, 96))
    store = Store(settings.common.store_path)
    http = make_http(settings)
    try:
        await store.open()
        await redis_conn.wait_until_ready(redis, settings.common.redis_url)
        await redis_conn.warn_if_unsafe(redis)
        processor = Processor(settings, redis, store, http)
        on_stop_signals(processor.stop)
        await processor.run()
    finally:
        await http.aclose()
        await store.close()
        await redis.aclose()


def main() -> None:
    try:
        settings = ProcessorSettings.from_env()
    except ConfigError as exc:
        print(f"sluice processor: {exc}", file=sys.stderr)
        sys.exit(2)
    if "--check" in sys.argv[1:]:  # the container healthcheck: is our heartbeat alive?
        heartbeats = Keys(settings.common.redis_prefix).processors_alive
        sys.exit(healthcheck.check(settings.common.redis_url, heartbeats, "proc",
                                    Env().optional("PROCESSOR_NAME")))
    logs.configure(settings.common.log_format, settings.common.log_level)
    logs.get("sluice.processor").info(
        "starting", settings=describe(settings.common), provider=describe(settings.provider),
        concurrency=settings.concurrency)
    install_uvloop()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
