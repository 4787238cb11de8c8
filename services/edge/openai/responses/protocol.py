"""The shapes of OpenAI's Responses API as Sluice answers them: ids, the response object, its
output items and usage. Pure: no I/O, no settings.

A response is a task: ``resp_<hex>`` names the task ``tsk_<hex>``, so every id is derived, never
stored twice. The ids of a response's output items are derived too (``msg_<hex>_<n>`` for the
item at output index n), so a stream replayed from the task's events, the object a retrieve
builds from the stored result, and a client holding either all name the same items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

RESPONSE_PREFIX, TASK_PREFIX = "resp_", "tsk_"
_RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")

# Output item kinds and the prefix of their ids, as OpenAI spells them.
ITEM_PREFIX = {"message": "msg", "reasoning": "rs", "function_call": "fc",
               "function_call_output": "fco"}

# Response statuses (``Response.status``) and the stream events that end each one.
QUEUED, IN_PROGRESS = "queued", "in_progress"
COMPLETED, INCOMPLETE, FAILED, CANCELLED = "completed", "incomplete", "failed", "cancelled"
TERMINAL_STATUSES = frozenset({COMPLETED, INCOMPLETE, FAILED, CANCELLED})
# OpenAI's streams have no "response.cancelled" event (its webhooks do): a cancelled stream ends
# with response.failed, whose response says ``status: "cancelled"``.
END_EVENT = {COMPLETED: "response.completed", INCOMPLETE: "response.incomplete",
             FAILED: "response.failed", CANCELLED: "response.failed"}
# The webhook event for each end, OpenAI's names (response.cancelled among them).
WEBHOOK_EVENT = {COMPLETED: "response.completed", INCOMPLETE: "response.incomplete",
                 FAILED: "response.failed", CANCELLED: "response.cancelled"}

# ``Response.error.code`` is one of a closed list in OpenAI's SDKs; Sluice's own code (and the
# provider's) goes in ``type`` so nothing is lost.
RATE_LIMITED_CODE, REFUSED_CODE, SERVER_CODE = "rate_limit_exceeded", "invalid_prompt", \
    "server_error"


def response_id(task_id: str) -> str:
    """``tsk_<hex>`` -> ``resp_<hex>``."""
    return RESPONSE_PREFIX + task_id.removeprefix(TASK_PREFIX)


def task_id_of(resp_id: str) -> str | None:
    """``resp_<hex>`` -> ``tsk_<hex>``; None for anything that is not a response id of ours
    (the route answers 404 for it, as for an unknown id)."""
    if not _RESPONSE_ID.fullmatch(resp_id):
        return None
    return TASK_PREFIX + resp_id.removeprefix(RESPONSE_PREFIX)


def item_id(kind: str, resp_id: str, output_index: int) -> str:
    """The id of the output item at ``output_index``, the same on every replay."""
    return f"{ITEM_PREFIX[kind]}_{resp_id.removeprefix(RESPONSE_PREFIX)}_{output_index}"


def input_item_id(kind: str, resp_id: str, index: int) -> str:
    """The id an input item given without one is listed under (``GET .../input_items``)."""
    prefix = ITEM_PREFIX.get(kind, "item")
    return f"{prefix}_{resp_id.removeprefix(RESPONSE_PREFIX)}_in{index}"


@dataclass(frozen=True, slots=True)
class Echo:
    """What a response object repeats of its request (OpenAI echoes them all), as given."""

    model: str | None = None
    instructions: str | None = None
    metadata: dict[str, Any] | None = None
    tools: list[Any] = field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    background: bool = False
    store: bool = True
    service_tier: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    truncation: str = "disabled"

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Echo:
        return cls(**{k: v for k, v in raw.items() if k in cls.__slots__})


def response_object(resp_id: str, echo: Echo, *, model: str, created_at: int, status: str,
                    output: list[dict[str, Any]] | None = None,
                    usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
                    incomplete_reason: str | None = None,
                    completed_at: int | None = None) -> dict[str, Any]:
    """A ``response`` object (``created_at`` and ``completed_at`` in epoch seconds)."""
    obj = {"id": resp_id, "object": "response", "created_at": created_at, "status": status,
           "completed_at": completed_at, "error": error,
           "incomplete_details": ({"reason": incomplete_reason}
                                  if incomplete_reason is not None else None),
           "output": output or [], "usage": usage}
    obj.update(echo.to_json())
    obj["model"] = model  # the model that answered, the default one when none was named
    return obj


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat Completions ``usage`` -> the Responses one. Cached prompt tokens as OpenAI
    (``prompt_tokens_details.cached_tokens``) or DeepSeek (``prompt_cache_hit_tokens``) report
    them; reasoning tokens from ``completion_tokens_details``."""
    if not chat_usage:
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    prompt_details = chat_usage.get("prompt_tokens_details") or {}
    completion_details = chat_usage.get("completion_tokens_details") or {}
    cached = prompt_details.get("cached_tokens")
    if cached is None:
        cached = chat_usage.get("prompt_cache_hit_tokens")
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": int(cached or 0),
                                     "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {
                "reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)},
            "total_tokens": int(chat_usage.get("total_tokens") or prompt + completion)}


def error_object(error: dict[str, Any] | None) -> dict[str, Any]:
    """A task's error (``{"code", "message", "status"?}``) as ``Response.error``."""
    error = error or {}
    code = str(error.get("code") or "provider_error")
    status = error.get("status")
    if status == 429 or code in ("rate_limited", "rate_limit_exceeded"):
        mapped = RATE_LIMITED_CODE
    elif status == 400:  # the provider refused the request itself
        mapped = REFUSED_CODE
    else:
        mapped = SERVER_CODE
    return {"code": mapped, "message": str(error.get("message") or "the response failed"),
            "type": code, "param": None}


def incomplete_reason(finish_reason: str | None) -> str | None:
    """Why a finished answer is incomplete (None: it is complete)."""
    if finish_reason == "length":
        return "max_output_tokens"
    if finish_reason == "content_filter":
        return "content_filter"
    return None


# --- output items -------------------------------------------------------------------------------

def reasoning_item(iid: str, text: str, status: str) -> dict[str, Any]:
    """DeepSeek-R1's ``reasoning_content`` as a reasoning item with its text (not a summary:
    the text is the model's own)."""
    return {"id": iid, "type": "reasoning", "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}] if text else []}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(text: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": text}


def message_item(iid: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": iid, "type": "message", "role": "assistant", "status": status,
            "content": parts}


def function_call_item(iid: str, call_id: str, name: str, namespace: str | None,
                       arguments: str, status: str) -> dict[str, Any]:
    item = {"id": iid, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}
    if namespace is not None:
        item["namespace"] = namespace
    return item


# --- input items as listed (GET /v1/responses/{id}/input_items) ------------------------------

def listed_input(items: list[dict[str, Any]], resp_id: str) -> list[dict[str, Any]]:
    """A response's input items as OpenAI lists them: each with an id (its own, or one derived
    from its place), a message's string content as one text part, a status."""
    listed = []
    for n, item in enumerate(items):
        kind = item.get("type") or "message"
        out = {**item, "type": kind}
        out.setdefault("id", input_item_id(kind, resp_id, n))
        if kind == "message":
            if isinstance(out.get("content"), str):
                part = "output_text" if out.get("role") == "assistant" else "input_text"
                out["content"] = [{"type": part, "text": out["content"]}
                                  | ({"annotations": []} if part == "output_text" else {})]
        out.setdefault("status", COMPLETED)
        listed.append(out)
    return listed


def page(items: list[dict[str, Any]], *, limit: int, order: str,
         after: str | None) -> dict[str, Any]:
    """One page of a list, as OpenAI pages lists (``after`` an item id, ``has_more``)."""
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(after) + 1:] if after in ids else []
    data = ordered[:limit]
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(ordered) > limit}
