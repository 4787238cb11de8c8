"""REDIS_OVERRIDES, as ``make test-redis-switches`` sets it, reaches every client the Redis
tests use: the fixtures' and an in-process edge's two pools (through its settings, read once),
so each run of that target really takes the redis-py path it switches to."""

from __future__ import annotations

from pathlib import Path

from services.edge.context import EDGE
from services.edge.tasks.feeds import FEEDS
from shared.config import Env, RedisOverrides
from shared.redis_conn import RedisClient, overrides_of
from tests.integration.edge_client import running_edge


async def test_the_runs_overrides_reach_every_client(redis: RedisClient, redis_url: str,
                                                     tmp_path: Path) -> None:
    wanted = RedisOverrides.from_env(Env())  # this process's environment, as make set it
    assert overrides_of(redis) == wanted
    async with running_edge(redis_url, tmp_path) as edge:
        assert edge.settings.common.redis_overrides == wanted
        app = edge.client.app
        assert app is not None
        assert overrides_of(app[EDGE].redis) == wanted
        assert overrides_of(app[FEEDS].blocking) == wanted
