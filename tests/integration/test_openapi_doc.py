"""The OpenAPI document and the app's router describe the same API: no route undocumented, no
documented operation missing. (schemathesis checks the answers: tests/e2e/test_schemathesis.py)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.edge.app import create_app
from services.edge.openapi import document
from services.edge.plumbing.auth import ADMIN_PREFIX, DASHBOARD_PREFIX, METRICS_PATH
from services.edge.settings import EdgeSettings
from shared.config import Env
from tests.integration.edge_client import running_edge

KEYED = Env({"EDGE_API_KEYS": "k-doc-1:alpha", "MAX_MESSAGES": "7", "MAX_TEXT_CHARS": "900",
             "MAX_TOKENS_LIMIT": "321"})
METHODS = {"get", "post", "put", "patch", "delete"}
OPERATOR_PATHS = (METRICS_PATH, DASHBOARD_PREFIX, ADMIN_PREFIX)


def router_operations(settings: EdgeSettings) -> set[tuple[str, str]]:
    """The client API's routes; the operator's (/metrics, the dashboard and its /api/admin/
    data) are not part of the document."""
    app = create_app(settings)
    return {(route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None
            and not route.resource.canonical.startswith(OPERATOR_PATHS)}


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items()
            for method in item if method in METHODS}


def test_every_route_is_documented_and_every_documented_operation_exists() -> None:
    settings = EdgeSettings.from_env(KEYED)
    routes, documented = router_operations(settings), documented_operations(document(settings))
    assert routes - documented == set(), "routes missing from services/edge/openapi.py"
    assert documented - routes == set(), "documented operations the app does not serve"


def test_the_document_states_this_edges_limits_and_security() -> None:
    doc = document(EdgeSettings.from_env(KEYED))
    schemas = doc["components"]["schemas"]
    messages = schemas["TaskRequest"]["properties"]["messages"]
    assert messages["maxItems"] == 7
    assert schemas["TaskRequest"]["properties"]["prompt"]["maxLength"] == 900
    max_tokens = schemas["TaskRequest"]["properties"]["max_tokens"]["anyOf"][0]
    assert max_tokens["maximum"] == 321
    assert schemas["TaskRequest"]["additionalProperties"] is False
    assert "additionalProperties" not in schemas["ChatCompletionRequest"]  # /v1 ignores extras
    assert doc["security"] == [{"apiKey": []}]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            public = path in ("/api/health", "/api/openapi.json")
            assert (op.get("security") == []) == public, (method, path)
            assert ("401" in op["responses"]) != public, (method, path)
    open_doc = document(EdgeSettings.from_env(Env({})))
    assert "security" not in open_doc
    assert all("401" not in op["responses"] for item in open_doc["paths"].values()
               for op in item.values())


def test_every_operation_documents_its_errors_with_the_error_shape() -> None:
    doc = document(EdgeSettings.from_env(KEYED))
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["operationId"] and op["responses"], (method, path)
            for status, answer in op["responses"].items():
                if int(status) >= 400 and path != "/api/health":
                    schema = answer["content"]["application/json"]["schema"]["$ref"]
                    expected = "OpenAIError" if path.startswith("/v1/") else "Error"
                    assert schema.endswith("/" + expected), (method, path, status)


async def test_the_document_is_served_without_a_key(redis_url: str, tmp_path: Path) -> None:
    async with running_edge(redis_url, tmp_path, EDGE_API_KEYS="k-doc-1:alpha",
                            MAX_MESSAGES="7") as edge:
        r = await edge.client.get("/api/openapi.json")
        assert r.status == 200 and r.content_type == "application/json"
        doc = await r.json()
        assert doc["openapi"].startswith("3.1")
        assert doc == document(edge.settings)
