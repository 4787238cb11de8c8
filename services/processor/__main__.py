"""``python -m services.processor``"""

from __future__ import annotations

import asyncio

from services.processor.settings import ProcessorSettings
from services.processor.worker import Processor, make_http
from shared import logs, redis_conn
from shared.config import describe
from shared.keys import Keys
from shared.runtime import (
    healthcheck_if_asked,
    install_uvloop,
    on_stop_signals,
    settings_or_exit,
)
from shared.store import Store


async def serve(settings: ProcessorSettings) -> None:
    redis = redis_conn.connect(settings.common.redis_url, wait_s=None,
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
    settings = settings_or_exit("processor", ProcessorSettings.from_env)
    heartbeats = Keys(settings.common.redis_prefix).processors_alive
    healthcheck_if_asked(settings.common, heartbeats, "proc", "PROCESSOR_NAME")
    logs.configure(settings.common.log_format, settings.common.log_level)
    logs.get("sluice.processor").info(
        "starting", settings=describe(settings.common), provider=describe(settings.provider),
        concurrency=settings.concurrency)
    install_uvloop()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
