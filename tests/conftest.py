"""Shared fixtures: a real redis-server for the session, and the whole stack on demand.

Every test is marked with its layer, the folder it lives in (``tests/chaos`` -> ``chaos``), so
``-m`` selects by layer. A ``pytestmark`` in a conftest.py would mark nothing: pytest reads it
only from test modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client import Api
from tests.harness import RedisClusterServers, RedisServer, external_or_own_redis

LAYERS = ("unit", "integration", "e2e", "chaos")
TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.resolve().relative_to(TESTS_DIR).parts
        if len(parts) < 2 or parts[0] not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of the folders "
                                    f"tests/{{{','.join(LAYERS)}}}, which name its layer")
        item.add_marker(parts[0])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, server, container = external_or_own_redis(tmp_path_factory.mktemp("redis"))
    yield url
    if server is not None:
        server.stop()
    if container is not None:
        container.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of 3 masters (redis-server processes on loopback ports) for the
    session; stacks on it are kept apart by their REDIS_PREFIX, as on the plain one."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """``redis+cluster://`` and one seed node: what a Sluice service is given."""
    return redis_cluster.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (AOF on), for tests that kill or restart Redis."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def api_factory() -> Iterator[Any]:
    made: list[Api] = []

    def make(base: str, key: str | None = None) -> Api:
        api = Api(base, key)
        made.append(api)
        return api
    yield make
    for api in made:
        api.http.close()
