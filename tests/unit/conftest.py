"""The mock provider in process for the unit tests that speak HTTP to it: ``start`` serves one
(aiohttp TestServer on a free port) per call, ``base`` is one with the fast settings, ``client``
an httpx client that trusts the test TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp.test_utils import TestServer

from harness.processes import CLIENT_TLS
from services.mockai.app import create_app
from services.mockai.settings import MockSettings

FAST = MockSettings(ttft_ms=0, tokens_per_s=0)

Start = Callable[..., Awaitable[str]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[TestServer] = []

    async def _start(settings: MockSettings = FAST) -> str:
        # TestServer runs with handler_cancellation=True, like `python -m services.mockai`.
        server = TestServer(create_app(settings))
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield _start
    for server in servers:
        await server.close()


@pytest.fixture
async def base(start: Start) -> str:
    return await start()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, verify=CLIENT_TLS) as c:
        yield c
