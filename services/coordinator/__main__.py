"""``python -m services.coordinator``"""

from __future__ import annotations

from services.coordinator.batcher import Coordinator
from services.coordinator.settings import CoordinatorSettings
from shared import logs, metrics, redis_conn, redis_watch, tracing
from shared.config import Env, describe
from shared.keys import Keys
from shared.runtime import (
    healthcheck_if_asked,
    help_if_asked,
    install_uvloop,
    on_stop_signals,
    run_service,
    settings_or_exit,
    tune_gc,
)

SUMMARY = ("A coordinator: reads new tasks, places them in the fair waiting room and flushes "
           "them as batches for the processors; /metrics on METRICS_PORT (0: off).")


def load(env: Env) -> CoordinatorSettings:
    """Everything the coordinator reads from the environment (its --help lists it)."""
    tracing.endpoint_of(env)
    return CoordinatorSettings.from_env(env)


async def serve(settings: CoordinatorSettings) -> None:
    # No timer per Redis command: a probe bounds how long one waits (shared/redis_watch.py).
    async with redis_watch.watched(settings.common.redis_url,
                                   overrides=settings.common.redis_overrides) as redis:
        await redis_conn.wait_until_ready(redis, settings.common.redis_url)
        await redis_conn.warn_if_unsafe(redis)
        coordinator = Coordinator(settings, redis)
        on_stop_signals(coordinator.stop)
        async with metrics.serving(settings.metrics, "coordinator",
                                   coordinator.refresh_metrics()):
            await coordinator.run()


def main() -> None:
    help_if_asked("services.coordinator", SUMMARY, load)
    settings = settings_or_exit("coordinator", CoordinatorSettings.from_env)
    heartbeats = Keys(settings.common.redis_prefix).coordinators_alive
    healthcheck_if_asked(settings.common, heartbeats, "coord", "COORDINATOR_NAME")
    logs.configure(settings.common.log_format, settings.common.log_level, "coordinator")
    logs.get("sluice.coordinator").info("starting", settings=describe(settings.common),
                                        batching=describe(settings.batching))
    install_uvloop()
    tune_gc()
    tracing.setup("coordinator")
    try:
        run_service("coordinator", serve(settings))
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
