"""Shared fixtures: a real redis-server for the session, and the whole stack on demand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RedisServer, external_or_own_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, server, container = external_or_own_redis(tmp_path_factory.mktemp("redis"))
    yield url
    if server is not None:
        server.stop()
    if container is not None:
        container.stop()  # type: ignore[attr-defined]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (AOF on), for tests that kill or restart Redis."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()
