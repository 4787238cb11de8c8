"""What a finished answer stores beyond choice 0's text: usage with its details, tool calls,
logprobs, the refusal, the system fingerprint and, for ``n`` > 1, every choice.

The stored result (``GET /api/tasks/{id}``, the /v1 answer, Batch API output lines) is
``tasks.result_dict``'s fields plus :func:`answer_extras`; the store keeps the extras in one
JSON column (``result_extra``) beside choice 0's text and the token counts.
"""

from __future__ import annotations

import math
from typing import Any

from services.processor.assembler import ChoiceResult, Usage
from services.processor.provider import Completion
from shared.governor import estimate_tokens

COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def usage_dict(usage: Usage | None) -> dict[str, Any] | None:
    """The provider's usage object: its three counts (clamped by the assembler) first, then
    every detail it gave (``prompt_tokens_details.cached_tokens``,
    ``completion_tokens_details.reasoning_tokens``, DeepSeek's ``prompt_cache_hit_tokens``...).
    None when it reported none: unknown, not 0."""
    if usage is None:
        return None
    out: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens,
                           "completion_tokens": usage.completion_tokens,
                           "total_tokens": usage.total_tokens}
    for key, value in usage.extra.items():
        if key not in out:
            out[key] = value
    return out


def counted_usage(request: dict[str, Any], done: Completion) -> Usage:
    """What the governor counts for an answer that reported no usage: the prompt as the
    submit estimated it (4 characters a token) and the text the answer streamed."""
    prompt = estimate_tokens({"messages": request.get("messages"), "max_tokens": 1}) - 1
    chars = sum(len(c.content) + len(c.reasoning) + len(c.refusal)
                + sum(len(t.arguments) + len(t.name) for t in c.tool_calls)
                for c in (done.choices or {0: done.result}).values())
    completion = math.ceil(chars / 4)
    return Usage(prompt, completion, prompt + completion)


def _tool_calls(c: ChoiceResult) -> list[dict[str, Any]]:
    return [{"id": t.id, "type": t.type or "function",
             "function": {"name": t.name, "arguments": t.arguments}} for t in c.tool_calls]


def _choice(c: ChoiceResult) -> dict[str, Any]:
    out: dict[str, Any] = {"index": c.index, "content": c.content,
                           "reasoning_content": c.reasoning, "finish_reason": c.finish_reason}
    if c.refusal:
        out["refusal"] = c.refusal
    if c.tool_calls:
        out["tool_calls"] = _tool_calls(c)
    if c.logprobs is not None:
        out["logprobs"] = c.logprobs
    return out


def answer_extras(done: Completion, usage: dict[str, Any] | None) -> dict[str, Any]:
    """The result's members beyond choice 0's text, finish reason and refusal; only those the
    answer has (a plain answer adds nothing, or only its usage's details)."""
    first, extras = done.result, dict[str, Any]()
    if first.tool_calls:
        extras["tool_calls"] = _tool_calls(first)
    if first.logprobs is not None:
        extras["logprobs"] = first.logprobs
    if done.system_fingerprint is not None:
        extras["system_fingerprint"] = done.system_fingerprint
    if len(done.choices) > 1:
        extras["choices"] = [_choice(c) for _, c in sorted(done.choices.items())]
    if usage is not None and len(usage) > len(COUNTS):
        extras["usage"] = usage
    return extras
