"""``python -m services.coordinator``"""

from __future__ import annotations

import asyncio
import sys

from services.coordinator.batcher import Coordinator
from services.coordinator.settings import CoordinatorSettings
from shared import healthcheck, logs, redis_conn
from shared.config import ConfigError, Env, describe
from shared.keys import Keys
from shared.runtime import install_uvloop, on_stop_signals


async def serve(settings: CoordinatorSettings) -> None:
    redis = redis_conn.connect(settings.common.redis_url)
    try:
        await redis_conn.wait_until_ready(redis, settings.common.redis_url)
        await redis_conn.warn_if_unsafe(redis)
        coordinator = Coordinator(settings, redis)
        on_stop_signals(coordinator.stop)
        await coordinator.run()
    finally:
        await redis.aclose()


def main() -> None:
    try:
        settings = CoordinatorSettings.from_env()
    except ConfigError as exc:
        print(f"sluice coordinator: {exc}", file=sys.stderr)
        sys.exit(2)
    if "--check" in sys.argv[1:]:  # the container healthcheck: is our heartbeat alive?
        heartbeats = Keys(settings.common.redis_prefix).coordinators_alive
        sys.exit(healthcheck.check(settings.common.redis_url, heartbeats, "coord",
                                    Env().optional("COORDINATOR_NAME")))
    logs.configure(settings.common.log_format, settings.common.log_level)
    logs.get("sluice.coordinator").info("starting", settings=describe(settings.common),
                                        batching=describe(settings.batching))
    install_uvloop()
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
