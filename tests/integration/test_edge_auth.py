"""API keys at the edge: which routes need one, what a wrong one gets, and the open mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.edge.app import create_app
from services.edge.plumbing.auth import find_tenant
from services.edge.settings import EdgeSettings
from shared.config import ConfigError, Env
from tests.integration.edge_client import running_edge

KEY_A, KEY_B = "sk-alpha-5be1c0a7d2", "sk-beta-91f3e6b2aa"
KEYS = f"{KEY_A}:alpha,{KEY_B}:beta"
# The dashboard's page and files hold no data: the page asks for a key for /api/admin/*.
PUBLIC = {"/api/health", "/api/openapi.json", "/dashboard", "/dashboard/static"}
SOME_ID = "tsk_" + "0" * 32


def protected_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the app's router that needs a key, with {id} filled in."""
    app = create_app(EdgeSettings.from_env(Env({"EDGE_API_KEYS": KEYS})))
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method != "HEAD" and path not in PUBLIC:
            out.add((route.method, path.replace("{id}", SOME_ID)))
    return sorted(out)


def test_routes_needing_a_key_are_every_api_and_v1_route_and_metrics() -> None:
    paths = {p for _, p in protected_routes()}
    assert {"/api/tasks", f"/api/tasks/{SOME_ID}", "/v1/chat/completions", "/metrics",
            "/api/admin/overview", f"/api/admin/tasks/{SOME_ID}/retry"} <= paths
    assert all(p.startswith(("/api/", "/v1/")) or p == "/metrics" for p in paths)


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Bearer wrong-key",
                                           f"Basic {KEY_A}", f"Bearer {KEY_A}x",
                                           f"Bearer {KEY_A[:-1]}", f"Token {KEY_A}"])
async def test_every_protected_route_refuses_a_missing_or_wrong_key(
        redis_url: str, tmp_path: Path, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=KEYS) as edge:
        for method, path in protected_routes():
            r = await edge.client.request(method, path, headers=headers,
                                          json={"prompt": "x"} if method == "POST" else None)
            text = await r.text()
            assert r.status == 401, (method, path, text)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert KEY_A not in text and "wrong-key" not in text
            if path.startswith("/v1/"):
                assert (await r.json())["error"]["type"] == "authentication_error"
        assert await edge.redis_keys() == []


async def test_a_right_key_passes_and_scheme_is_case_insensitive(
        redis_url: str, tmp_path: Path) -> None:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=KEYS) as edge:
        for header in (f"Bearer {KEY_A}", f"bearer {KEY_B}", f"BEARER   {KEY_A}  "):
            r = await edge.client.get("/api/async-status", headers={"Authorization": header})
            assert r.status == 200, header


async def test_health_and_openapi_are_public_and_health_names_the_mode(
        redis_url: str, tmp_path: Path) -> None:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS=KEYS) as edge:
        health = await edge.client.get("/api/health")
        assert health.status == 200
        assert (await health.json())["auth"] == "api-keys"
        assert (await edge.client.get("/api/openapi.json")).status == 200
    async with running_edge(redis_url, tmp_path) as edge:
        body = await (await edge.client.get("/api/health")).json()
        assert body["auth"].startswith("open")
        r = await edge.client.post("/api/tasks", json={"prompt": "x"})
        assert r.status == 202  # open mode: no key needed, tenant "public"
        task = await edge.redis.hgetall(f"{{{edge.prefix}}}:task:{(await r.json())['id']}")
        assert task["tenant"] == "public"


def test_keys_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# one key per line\nk-file-1:gamma\n\nk-file-2:delta\n")
    settings = EdgeSettings.from_env(Env({"EDGE_API_KEYS": " k1:alpha , k2:beta",
                                          "EDGE_API_KEYS_FILE": str(keys_file)}))
    assert settings.api_keys.get() == {"k1": "alpha", "k2": "beta", "k-file-1": "gamma",
                                 "k-file-2": "delta"}
    assert not settings.open_access
    assert EdgeSettings.from_env(Env({})).open_access


@pytest.mark.parametrize("value", ["sk-canary-no-tenant", "sk-canary:", "sk-canary:al pha",
                                   "sk-canary:a/b", "sk canary:alpha", "sk-canary:" + "t" * 65])
def test_malformed_keys_stop_the_edge_without_repeating_the_key(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        EdgeSettings.from_env(Env({"EDGE_API_KEYS": value}))
    assert "EDGE_API_KEYS" in str(info.value)
    assert "canary" not in str(info.value)


def test_a_key_without_a_name_stops_the_edge() -> None:
    with pytest.raises(ConfigError, match="EDGE_API_KEYS: expected key:tenant pairs"):
        EdgeSettings.from_env(Env({"EDGE_API_KEYS": ":alpha"}))


def test_missing_keys_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EDGE_API_KEYS_FILE"):
        EdgeSettings.from_env(Env({"EDGE_API_KEYS_FILE": str(tmp_path / "absent")}))


def test_find_tenant() -> None:
    keys = {"k-one": "alpha", "k-two": "beta"}
    assert find_tenant(keys, "k-one") == "alpha"
    assert find_tenant(keys, "k-two") == "beta"
    for wrong in ("", "k-on", "k-one ", "K-ONE", "k-one\x00", "\udcff"):
        assert find_tenant(keys, wrong) is None
