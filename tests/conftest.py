"""Shared fixtures: a real redis-server for the session, and the whole stack on demand.

Every test is marked with its layer, the folder it lives in (``tests/chaos`` -> ``chaos``), so
``-m`` selects by layer. A ``pytestmark`` in a conftest.py would mark nothing: pytest reads it
only from test modules.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import processes
from harness.postgres import PostgresServer, memory_dir
from harness.processes import RedisClusterServers, RedisServer, external_or_own_redis
from shared.store import make_store
from tests.client import Api

# The stores every store-dependent test runs against; TEST_STORES=sqlite (or postgresql)
# narrows it, e.g. on a machine without PostgreSQL.
STORES = tuple(s.strip() for s in os.environ.get("TEST_STORES", "sqlite,postgresql").split(",")
               if s.strip())


def _first_store_only(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked first_store_only (Redis, auth and API-shape cases, where the store does
    nothing of its own) run on the first of STORES only, to keep `make test` short;
    TEST_EVERY_STORE=1 runs them on every store too. Tests marked sqlite_only are about the
    SQLite file itself (deleted, replaced, corrupt, out of disk), and run on SQLite alone."""
    every = os.environ.get("TEST_EVERY_STORE") == "1"
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        store = params.get("stack_store", params.get("store_url"))
        later = store is not None and store != STORES[0]
        not_sqlite = store is not None and store != "sqlite"
        dropped = ((later and not every and item.get_closest_marker("first_store_only"))
                   or (not_sqlite and item.get_closest_marker("sqlite_only")))
        (drop if dropped else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# pytester: tests/unit/test_layers.py runs pytest sessions in process.
pytest_plugins = ["pytester"]

LAYERS = ("unit", "integration", "e2e", "chaos")
TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.resolve().relative_to(TESTS_DIR).parts
        if len(parts) < 2 or parts[0] not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of the folders "
                                    f"tests/{{{','.join(LAYERS)}}}, which name its layer")
        item.add_marker(parts[0])
    _first_store_only(config, items)


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


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[Path]:
    """A data directory initdb made and no server ever runs on: every PostgreSQL server of
    the session is a copy of it (initdb takes seconds, a copy a fraction of one)."""
    template = PostgresServer(dir=memory_dir()).init()
    try:
        yield template.data
    finally:
        template.remove()


@pytest.fixture(scope="session")
def postgres(postgres_template: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server (Debian's binaries, as user postgres when we are root) for the
    session; each test that uses it gets a database of its own (``pg_url``)."""
    server = PostgresServer(dir=memory_dir()).init(postgres_template).start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    return postgres.new_database()


def _migrated(url: str) -> None:
    async def go() -> None:
        store = make_store(url)
        await store.open()  # applies every migration
        await store.close()
    asyncio.run(go())


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store file with every migration applied, closed: each test's store is a copy
    (migrating a new file took 15-30 ms of every test that has a store)."""
    path = tmp_path_factory.mktemp("migrated") / "store.db"
    _migrated(str(path))
    return path


@pytest.fixture(scope="session")
def migrated_postgres(postgres: PostgresServer) -> str:
    """The name of a database with every migration applied, which no one connects to: each
    test's database is made from it (CREATE DATABASE ... TEMPLATE), not migrated again."""
    url = postgres.new_database()
    _migrated(url)
    return url.rsplit("/", 1)[1]


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """STORE_URL of a fresh store of each backend: a SQLite file, a PostgreSQL database, each
    with the schema in place (tests of the migrations themselves start from nothing:
    ``pg_url``, or a path of their own)."""
    if request.param == "sqlite":
        path = tmp_path / "store.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        return str(path)
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database(template=request.getfixturevalue("migrated_postgres"))


@pytest.fixture
def own_postgres(postgres_template: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, for tests that kill or restart it."""
    server = PostgresServer(dir=memory_dir()).init(postgres_template).start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session", params=STORES)
def stack_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which store the stacks of the e2e and chaos suites get (they run once per store):
    session-scoped, so pytest runs every test on one store, then on the next."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        processes.new_store = lambda _tmp: server.new_database()
    try:
        yield str(request.param)
    finally:
        processes.new_store = processes.sqlite_store
