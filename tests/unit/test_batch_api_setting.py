"""BATCH_API: the Batch API and webhooks are served only when asked for, and only on SQLite."""

from __future__ import annotations

from services.edge.app import create_app
from services.edge.openapi import document
from services.edge.settings import EdgeSettings
from shared.config import Env

BATCH_PATHS = ("/v1/files", "/v1/batches", "/api/webhooks", "/api/webhook-secret")


def served(env: dict[str, str]) -> tuple[set[str], set[str]]:
    settings = EdgeSettings.from_env(Env(env))
    app = create_app(settings)
    routes = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    return ({p for p in routes if p.startswith(BATCH_PATHS)},
            {p for p in document(settings)["paths"] if p.startswith(BATCH_PATHS)})


def test_off_by_default_no_routes_and_not_in_the_document() -> None:
    assert EdgeSettings.from_env(Env({})).batch_api_on is False
    assert served({}) == (set(), set())


def test_on_with_the_sqlite_store() -> None:
    routes, documented = served({"BATCH_API": "true", "STORE_URL": "sqlite:///tmp/x.db"})
    assert "/v1/batches/{id}/cancel" in routes and "/api/webhooks/{id}/test" in routes
    assert routes == documented


def test_not_served_on_postgresql_even_when_asked_for() -> None:
    env = {"BATCH_API": "true", "STORE_URL": "postgresql://u:p@127.0.0.1:5432/sluice"}
    assert EdgeSettings.from_env(Env(env)).batch_api_enabled is True
    assert EdgeSettings.from_env(Env(env)).batch_api_on is False
    assert served(env) == (set(), set())
