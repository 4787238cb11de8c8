"""``/api/ai-status`` says whether the answers come from Sluice's mock provider by asking the
provider, not by guessing from its URL: under docker compose the mock is ``http://mockai:8090``,
and AI_FORWARD_METADATA says what is sent to a provider, not which provider it is."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from services.mockai.app import create_app as create_mock
from services.mockai.settings import MockSettings
from shared.config import Secret
from tests.integration.edge_client import running_edge


@contextlib.asynccontextmanager
async def mock_provider(**settings: Any) -> AsyncIterator[str]:
    """The mock on a free port, named ``localhost`` as compose names it ``mockai``."""
    server = TestServer(create_mock(MockSettings(**settings)))
    await server.start_server()
    try:
        yield f"http://localhost:{server.port}/v1"
    finally:
        await server.close()


async def ai_status(redis_url: str, tmp: Path, **env: str) -> dict[str, Any]:
    env.setdefault("AI_MODEL", "mock-r1")  # required with AI_BASE_URL
    async with running_edge(redis_url, tmp, **env) as edge:
        r = await edge.client.get("/api/ai-status")
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def test_the_mock_is_recognised_at_any_address(redis_url: str, tmp_path: Path) -> None:
    async with mock_provider() as url:
        assert (await ai_status(redis_url, tmp_path, AI_BASE_URL=url))["mock"] is True


async def test_a_mock_that_wants_a_key_is_recognised_without_one(
        redis_url: str, tmp_path: Path) -> None:
    async with mock_provider(api_key=Secret("sk-mock-only")) as url:
        assert (await ai_status(redis_url, tmp_path, AI_BASE_URL=url))["mock"] is True


async def test_another_openai_compatible_provider_is_not_the_mock(
        redis_url: str, tmp_path: Path) -> None:
    """Another Sluice edge serves /v1/models too: an OpenAI-compatible API that is not the
    mock, even with metadata forwarded to it."""
    async with running_edge(redis_url, tmp_path) as other:
        url = str(other.client.make_url("/v1"))
        status = await ai_status(redis_url, tmp_path, AI_BASE_URL=url,
                                 AI_FORWARD_METADATA="true")
    assert status["mock"] is False


async def test_an_unreachable_provider_is_not_known_to_be_anything(
        redis_url: str, tmp_path: Path) -> None:
    status = await ai_status(redis_url, tmp_path, AI_BASE_URL="http://127.0.0.1:9/v1")
    assert status["mock"] is None


async def test_a_provider_error_is_shown_only_to_the_tenant_whose_task_caused_it(
        redis_url: str, tmp_path: Path) -> None:
    """A provider's error message can quote a tenant's request: another tenant must not read
    it in /api/ai-status."""
    from services.processor.ai_status import ProviderStatus
    from shared.keys import Keys

    keys = "key-of-acme:acme,key-of-globex:globex"
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=keys) as edge:
        await ProviderStatus(edge.redis, Keys(edge.prefix)).note(
            error="acme's prompt was too long", tenant="acme")

        async def last_error(key: str) -> Any:
            r = await edge.client.get("/api/ai-status",
                                      headers={"Authorization": f"Bearer {key}"})
            assert r.status == 200
            return (await r.json())["last_error"]

        assert await last_error("key-of-acme") == "acme's prompt was too long"
        assert await last_error("key-of-globex") is None


async def test_from_providers_file_every_provider_is_asked_not_the_edges_own_url(
        redis_url: str, tmp_path: Path) -> None:
    """With PROVIDERS_FILE the processors call its providers: the edge's AI_BASE_URL (compose
    sets it to the mock) says nothing. The mock only when every provider is."""
    def providers_file(*urls: str) -> str:
        path = tmp_path / f"providers-{len(urls)}-{abs(hash(urls))}.toml"
        path.write_text("".join(f'[[provider]]\nname = "p{i}"\nbase_url = "{u}"\n\n'
                                for i, u in enumerate(urls))
                        + '[[model]]\nname = "m"\nroutes = [{ provider = "p0", model = "m" }]\n')
        return str(path)

    async with mock_provider() as mock, mock_provider() as other_mock, \
            running_edge(redis_url, tmp_path) as other:
        not_mock = str(other.client.make_url("/v1"))
        status = await ai_status(redis_url, tmp_path, AI_BASE_URL=mock,
                                 PROVIDERS_FILE=providers_file(not_mock))
        assert status["mock"] is False
        status = await ai_status(redis_url, tmp_path, AI_BASE_URL=mock,
                                 PROVIDERS_FILE=providers_file(other_mock, not_mock))
        assert status["mock"] is False
        status = await ai_status(redis_url, tmp_path, AI_BASE_URL=not_mock,
                                 PROVIDERS_FILE=providers_file(mock, other_mock))
        assert status["mock"] is True
