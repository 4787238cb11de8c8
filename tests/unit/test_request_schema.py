"""The OpenAPI document and the validation of a submit agree on every limit.

Every bound the document states for the body of POST /api/tasks and POST /v1/chat/completions
(minimum, maximum, exclusiveMinimum, minLength, maxLength, minItems, maxItems, anywhere in the
request schema, through its refs and branches) is read from the document itself, not from a
list: for each, a body holding a value at the bound must be accepted by the edge's validation,
and one holding a value just past it refused with a 422 naming that very member. The body is
built from the document too (the smallest instance of each schema), and checked as the routes
check it: ``bodies.loads`` of its bytes, then ``parse_task``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from services.edge.openapi import document
from services.edge.plumbing.bodies import loads
from services.edge.plumbing.errors import ApiError
from services.edge.settings import EdgeSettings
from services.edge.tasks.validation import parse_task
from shared.config import Env

Schema = dict[str, Any]
# Small limits, so a body at each of them is small. MAX_TEXT_CHARS (all the messages' text)
# is the one limit JSON Schema cannot state: room for 128 tool calls in one message.
SETTINGS = EdgeSettings.from_env(Env({
    "AI_MODEL": "m-a", "AI_MODELS": "m-a,m-b,m-c", "MAX_MESSAGES": "5",
    "MAX_TEXT_CHARS": "20000", "MAX_TOKENS_LIMIT": "300", "MAX_METADATA_BYTES": "512"}))
DOC = document(SETTINGS)
COMPONENTS: dict[str, Schema] = DOC["components"]["schemas"]
ROUTES = {"/api/tasks": False, "/v1/chat/completions": True}
KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
            "maxLength", "minItems", "maxItems")
# A step from a schema to a part of it: ("property", name), ("items",), ("values",) (an
# object's additionalProperties), ("branch", i) (the i-th of anyOf or oneOf).
Step = tuple[Any, ...]


def request_schema(route: str) -> Schema:
    op = DOC["paths"][route]["post"]
    return op["requestBody"]["content"]["application/json"]["schema"]


def deref(schema: Schema) -> Schema:
    while "$ref" in schema:
        schema = COMPONENTS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def bounds(schema: Schema, path: tuple[Step, ...] = (), seen: frozenset[str] = frozenset()
           ) -> Iterator[tuple[tuple[Step, ...], str, Any, Schema]]:
    """Every (path, keyword, bound, schema holding it) under ``schema``."""
    ref = schema.get("$ref")
    if ref is not None:
        if ref in seen:  # a recursive schema (MetadataValue): its bounds are found once
            return
        seen = seen | {ref}
    schema = deref(schema)
    for keyword in KEYWORDS:
        if keyword in schema:
            yield path, keyword, schema[keyword], schema
    for name, sub in schema.get("properties", {}).items():
        yield from bounds(sub, (*path, ("property", name)), seen)
    if isinstance(schema.get("items"), dict):
        yield from bounds(schema["items"], (*path, ("items",)), seen)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from bounds(schema["additionalProperties"], (*path, ("values",)), seen)
    for key in ("anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(key, [])):
            yield from bounds(sub, (*path, ("branch", i)), seen)


def smallest(schema: Schema, forced: dict[str, Any] | None = None) -> Any:
    """The smallest instance of ``schema`` (its ``forced`` members set as given)."""
    schema = deref(schema)
    forced = forced or {}
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return _object(schema, forced)
    if "anyOf" in schema or "oneOf" in schema:
        branches = [b for b in schema.get("anyOf", schema.get("oneOf", []))
                    if deref(b).get("type") != "null"]
        return smallest(branches[0], forced)
    if kind == "array":
        return [smallest(schema["items"])] * max(schema.get("minItems", 0), 1)
    if kind == "string":
        if schema.get("format") == "date-time":
            return "2030-01-01T00:00:00Z"
        return "x" * max(schema.get("minLength", 1), 1)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
        return min(max(low, 1), schema.get("maximum", 1))
    if kind == "boolean":
        return True
    return "x"  # any value: a forwarded member


def _object(schema: Schema, forced: dict[str, Any]) -> dict[str, Any]:
    """The object's required members, and those of its rules' first branch that the forced
    members do not contradict (TaskRequest: messages, or prompt when prompt is forced)."""
    props = dict(schema.get("properties", {}))
    required = list(schema.get("required", []))
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key) or []
        fitting = [b for b in branches if set(b.get("required", [])) & set(forced)]
        branch = (fitting or branches or [{}])[0]
        required += [r for r in branch.get("required", []) if r not in required]
        for name, sub in branch.get("properties", {}).items():
            if "not" not in sub:
                props[name] = {**deref(props.get(name, {})), **sub}
    out = {name: smallest(props[name]) for name in required if name not in forced}
    return {**out, **forced}


def build(schema: Schema, path: tuple[Step, ...], leaf: Any) -> tuple[Any, str]:
    """An instance of ``schema`` with ``leaf`` at ``path``, and that member's name as the edge
    names it (``messages[0].tool_calls[0].id``)."""
    if not path:
        return leaf, ""
    schema = deref(schema)
    step, rest = path[0], path[1:]
    if step[0] == "property":
        value, below = build(schema["properties"][step[1]], rest, leaf)
        return smallest(schema, {step[1]: value}), step[1] + ("." + below if below and
                                                               below[0] != "[" else below)
    if step[0] == "items":
        value, below = build(schema["items"], rest, leaf)
        filler = smallest(schema["items"])
        return [value] + [filler] * (schema.get("minItems", 1) - 1), "[0]" + _dot(below)
    if step[0] == "values":
        value, below = build(schema["additionalProperties"], rest, leaf)
        return {"k": value}, "k" + _dot(below)
    branches = schema.get("anyOf", schema.get("oneOf"))
    return build(branches[step[1]], rest, leaf)


def _dot(below: str) -> str:
    return "." + below if below and below[0] != "[" else below


def values(keyword: str, bound: Any, schema: Schema) -> tuple[Any, Any]:
    """(a value at the bound, accepted; one just past it, refused)."""
    step = 1 if schema.get("type") == "integer" or float(bound).is_integer() else 0.5
    if keyword == "maximum":
        return bound, bound + step
    if keyword == "minimum":
        return bound, bound - step
    if keyword == "exclusiveMinimum":
        return bound + 0.5, bound
    if keyword == "exclusiveMaximum":
        return bound - 0.5, bound
    item = smallest(schema["items"]) if "items" in schema else None
    if keyword == "maxLength":
        return "x" * bound, "x" * (bound + 1)
    if keyword == "minLength":
        return "x" * bound, "x" * (bound - 1)
    if keyword == "maxItems":
        return [item] * bound, [item] * (bound + 1)
    return [item] * bound, [item] * (bound - 1)  # minItems


def check(route: str, body: Any) -> ApiError | None:
    """The route's validation of ``body``: its bytes read as the route reads them, then the
    task parsed. None: accepted."""
    try:
        parse_task(loads(json.dumps(body).encode()), SETTINGS, openai=ROUTES[route])
    except ApiError as err:
        return err
    return None


CASES = [(route, path, keyword, bound, schema)
         for route in ROUTES for path, keyword, bound, schema in bounds(request_schema(route))]


def _case_id(case: tuple[Any, ...]) -> str:
    route, path, keyword, bound, _ = case
    where = ".".join(str(step[-1]) if step[0] != "items" else "*" for step in path)
    return f"{route}:{where}:{keyword}={bound}"


def test_the_document_states_the_limits_of_settings_and_model() -> None:
    found = {(keyword, bound) for _, _, keyword, bound, _ in CASES}
    for limit in (("maxItems", 5), ("maxLength", 20000), ("maximum", 300), ("maximum", 128),
                  ("maximum", 1000), ("minimum", -1000), ("maxLength", 64),
                  ("maxLength", 256), ("maxItems", 4), ("exclusiveMinimum", 0)):
        assert limit in found, limit
    assert len(CASES) > 40


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_a_body_at_each_bound_is_accepted_and_one_past_it_refused(
        case: tuple[str, tuple[Step, ...], str, Any, Schema]) -> None:
    route, path, keyword, bound, schema = case
    at, past = values(keyword, bound, schema)
    root = request_schema(route)
    body, member = build(root, path, at)
    err = check(route, body)
    assert err is None, (body, err and err.message)
    body, member = build(root, path, past)
    err = check(route, body)
    assert err is not None, f"{member} = {past!r} past {keyword} {bound} was accepted"
    assert err.status == 422, err.message
    assert err.param == member, err.message


# A body using every member the model reads, each message kind, each part kind, each call kind.
FULL: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "name": "al", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "custom", "custom": {"name": "g", "input": "x"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
    "model": "m-b", "max_tokens": 10, "max_completion_tokens": 10, "temperature": 1,
    "top_p": 0.5, "stop": ["a"], "n": 2, "stream": True, "stream_options": {"include_usage": True},
    "service_tier": "flex", "metadata": {"a": [1, {"b": 2}]}, "deadline": 60, "priority": 5,
    "provider_options": {"top_k": 3}, "tools": [], "seed": 1}
ANY_JSON = [None, True, 0, -1, 1.5, "", "x", [], {}, [1], {"a": 1}, [[]], [{}]]


def _members(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if path:
        yield path
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, value in items:
        yield from _members(value, (*path, key))


def _with(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(body))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy


@pytest.mark.parametrize("route", ROUTES)
def test_any_value_anywhere_is_accepted_or_refused_never_a_crash(route: str) -> None:
    """Whatever JSON stands in any member, the answer is an acceptance or a 4xx naming it: a
    role that is an array was a TypeError (a 500) before the model."""
    assert check(route, FULL) is None
    refused = 0
    for path in _members(FULL):
        for value in ANY_JSON:
            err = check(route, _with(FULL, path, value))
            if err is not None:
                refused += 1
                assert err.status in (404, 422) and err.param, (path, value, err.message)
    assert refused > 300
