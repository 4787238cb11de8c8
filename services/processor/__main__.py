"""``python -m services.processor``"""

from __future__ import annotations

from services.processor.settings import ProcessorSettings
from services.processor.worker import Processor, make_http
from shared import logs, metrics, redis_conn, redis_watch, rollup, tracing
from shared.config import Env, describe
from shared.keys import Keys
from shared.loops import until_redis_answers
from shared.redis_conn import RedisClient
from shared.runtime import (
    healthcheck_if_asked,
    help_if_asked,
    install_uvloop,
    on_stop_signals,
    run_service,
    settings_or_exit,
    tune_gc,
)
from shared.store import make_store
from shared.store_check import check_identity

SUMMARY = ("A processor: takes batches, calls the provider (AI_BASE_URL; the mock provider on "
           "this host when unset) and stores each result; /metrics on METRICS_PORT (0: off).")


def load(env: Env) -> ProcessorSettings:
    """Everything the processor reads from the environment (its --help lists it)."""
    tracing.endpoint_of(env)
    return ProcessorSettings.from_env(env)


async def serve(settings: ProcessorSettings) -> None:
    # No timer per Redis command (a tenth of the processor's CPU per task): a probe bounds
    # how long one waits instead (shared/redis_watch.py).
    async with redis_watch.watched(settings.common.redis_url, wait_s=None,
                                   max_connections=min(settings.concurrency + 32, 96),
                                   overrides=settings.common.redis_overrides) as redis:
        await _serve(settings, redis)


async def _serve(settings: ProcessorSettings, redis: RedisClient) -> None:
    # patience_s=None: a finished result is retried until the store takes it, never dropped.
    store = make_store(settings.common.store_url.get(), pool_size=settings.common.store_pool_size,
                       patience_s=None)
    http = make_http(settings)
    try:
        await store.open()
        await redis_conn.wait_until_ready(redis, settings.common.redis_url)
        await redis_conn.warn_if_unsafe(redis)
        await until_redis_answers(  # a full Redis is waited out here too
            lambda: check_identity(store, redis, Keys(settings.common.redis_prefix)),
            "identity")
        processor = Processor(settings, redis, store, http)
        on_stop_signals(processor.stop)
        async with (metrics.serving(settings.metrics, "processor"),
                    rollup.flushing(redis, processor.keys)):
            await processor.run()
    finally:
        await http.aclose()
        await store.close()


def main() -> None:
    help_if_asked("services.processor", SUMMARY, load)
    settings = settings_or_exit("processor", ProcessorSettings.from_env)
    heartbeats = Keys(settings.common.redis_prefix).processors_alive
    healthcheck_if_asked(settings.common, heartbeats, "proc", "PROCESSOR_NAME")
    logs.configure(settings.common.log_format, settings.common.log_level, "processor")
    logs.get("sluice.processor").info(
        "starting", settings=describe(settings.common), provider=describe(settings.provider),
        concurrency=settings.concurrency)
    install_uvloop()
    tune_gc()
    tracing.setup("processor")
    try:
        run_service("processor", serve(settings))
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
