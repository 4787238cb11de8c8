"""BATCH_API: the Batch API and webhooks are served by default, on either store, and not at
all when turned off."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("store_url", ["sqlite:///tmp/x.db",
                                       "postgresql://u:p@127.0.0.1:5432/sluice"])
def test_on_by_default_on_either_store(store_url: str) -> None:
    assert EdgeSettings.from_env(Env({"STORE_URL": store_url})).batch_api_on is True
    routes, documented = served({"STORE_URL": store_url})
    assert "/v1/batches/{id}/cancel" in routes and "/api/webhooks/{id}/test" in routes
    assert routes == documented


def test_off_no_routes_and_not_in_the_document() -> None:
    assert EdgeSettings.from_env(Env({"BATCH_API": "false"})).batch_api_on is False
    assert served({"BATCH_API": "false"}) == (set(), set())
