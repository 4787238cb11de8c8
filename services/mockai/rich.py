"""Answers beyond one plain choice: tool calls, logprobs, ``n`` choices, a refusal, no usage.

Built as whole chunk objects, dumped one by one: these answers are for tests of what a relay
keeps, not for the benchmarks, whose plain answers keep protocol.py's byte templates.

What the mock answers is what a real provider would, chosen deterministically:
- a request that offers ``tools`` (and whose last message is not a tool's result) gets tool
  calls, ``finish_reason: "tool_calls"``, the arguments streamed ``split`` characters a chunk;
- ``logprobs: true`` gets a logprob per content token, with ``top_logprobs`` alternatives;
- ``n`` > 1 gets ``n`` choices of different words, their chunks interleaved by token;
- ``metadata.mock.refusal`` answers that refusal, ``metadata.mock.usage: false`` no usage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from .protocol import ChatRequest
from .text import content_tokens, reasoning_tokens

FINGERPRINT = "fp_mockai"
DEFAULT_SPLIT = 5  # characters of arguments per streamed chunk: a call spans several


@dataclass(frozen=True, slots=True)
class RichAnswer:
    chunks: tuple[bytes, ...]  # SSE events, in order, the finish chunks last
    body: bytes  # the same answer as one chat.completion
    completion_tokens: int
    finish_reason: str  # the first choice's (what the request's record says)


@dataclass(slots=True)
class _Choice:
    index: int
    reasoning: tuple[str, ...] = ()
    content: tuple[str, ...] = ()
    refusal: str | None = None
    calls: tuple[dict[str, Any], ...] = ()
    finish_reason: str = "stop"


def _logprob(token: str, rank: int) -> dict[str, Any]:
    return {"token": token, "logprob": round(-0.25 * rank - 0.01 * len(token), 4),
            "bytes": list(token.encode())}


def _token_logprobs(token: str, top: int) -> dict[str, Any]:
    entry = _logprob(token, 0)
    entry["top_logprobs"] = [_logprob(token if k == 0 else f"{token}~{k}", k)
                             for k in range(top)]
    return entry


def _choices(req: ChatRequest, cid: str, seed: bytes, n_content: int, n_reasoning: int,
             max_tokens: int | None, tool_arguments: str | None) -> list[_Choice]:
    mock, out = req.mock, []
    for i in range(req.n):
        choice_seed = seed if i == 0 else hashlib.blake2b(seed + bytes([i % 256]),
                                                          digest_size=16).digest()
        choice = _Choice(i)
        if req.tools:
            calls = []
            for k in range(mock.tool_calls or 1):
                name = req.tools[k % len(req.tools)]
                arguments = mock.tool_arguments or tool_arguments
                if arguments is None:
                    word = content_tokens(choice_seed + bytes([k]), 1)[0]
                    arguments = orjson.dumps({"query": word, "call": k}).decode()
                calls.append({"id": f"call_{cid[-10:]}_{i}_{k}", "type": "function",
                              "function": {"name": name, "arguments": arguments}})
            choice.calls, choice.finish_reason = tuple(calls), "tool_calls"
        elif mock.refusal is not None:
            choice.refusal = mock.refusal
        else:
            n = n_content
            if max_tokens is not None and max_tokens < n:
                n, choice.finish_reason = max_tokens, "length"
            choice.reasoning = reasoning_tokens(choice_seed, n_reasoning)
            choice.content = content_tokens(choice_seed, n)
        out.append(choice)
    return out


def build(req: ChatRequest, cid: str, created: int, model: str, seed: bytes, n_content: int,
          n_reasoning: int, usage_obj: dict[str, Any], *,
          tool_arguments: str | None = None) -> RichAnswer:
    """The answer to ``req``; ``usage_obj`` is one choice's usage, scaled here to them all;
    ``tool_arguments``: the calls' arguments when the request asks for none
    (MOCKAI_TOOL_ARGUMENTS)."""
    choices = _choices(req, cid, seed, n_content, n_reasoning, req.max_tokens, tool_arguments)
    split = req.mock.split or DEFAULT_SPLIT
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None,
              logprobs: Any = None) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs,
             "finish_reason": finish}]}) + b"\n\n"

    events: list[bytes] = [chunk(c.index, {"role": "assistant", "content": None
                                           if c.calls or c.refusal is not None else ""})
                           for c in choices]
    lines: list[list[bytes]] = []
    completion_tokens = 0
    for c in choices:
        mine = [chunk(c.index, {"reasoning_content": t, "content": None}) for t in c.reasoning]
        for t in c.content:
            lp = ({"content": [_token_logprobs(t, req.top_logprobs)], "refusal": None}
                  if req.logprobs else None)
            mine.append(chunk(c.index, {"content": t}, logprobs=lp))
        if c.refusal is not None:
            mine += [chunk(c.index, {"refusal": c.refusal[k:k + split]})
                     for k in range(0, len(c.refusal), split)]
        for k, call in enumerate(c.calls):
            fn, args = call["function"], call["function"]["arguments"]
            mine.append(chunk(c.index, {"tool_calls": [
                {"index": k, "id": call["id"], "type": "function",
                 "function": {"name": fn["name"], "arguments": ""}}]}))
            mine += [chunk(c.index, {"tool_calls": [
                {"index": k, "function": {"arguments": args[j:j + split]}}]})
                     for j in range(0, len(args), split)]
        completion_tokens += (len(c.reasoning) + len(c.content) + len(c.refusal or "") // 4
                              + sum(len(x["function"]["arguments"]) // 4 + 1 for x in c.calls))
        lines.append(mine)
    # Interleaved, a chunk of each choice in turn, as OpenAI streams n > 1.
    longest = max((len(x) for x in lines), default=0)
    events += [line[j] for j in range(longest) for line in lines if j < len(line)]
    usage_all = None
    if req.mock.usage:
        prompt = int(usage_obj.get("prompt_tokens") or 0)
        reasoning = sum(len(c.reasoning) for c in choices)
        usage_all = {**usage_obj, "completion_tokens": completion_tokens,
                     "total_tokens": prompt + completion_tokens,
                     "completion_tokens_details": {"reasoning_tokens": reasoning}}
    for c in choices:
        events.append(chunk(c.index, {}, c.finish_reason))
    if usage_all is not None:
        events.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage_all})
                      + b"\n\n")
    body = {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [_whole(c, req) for c in choices], "usage": usage_all}
    return RichAnswer(tuple(events), orjson.dumps(body), completion_tokens,
                      choices[0].finish_reason)


def _whole(c: _Choice, req: ChatRequest) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if c.calls or c.refusal is not None
                               else "".join(c.content)}
    if c.reasoning:
        message["reasoning_content"] = "".join(c.reasoning)
    if c.refusal is not None:
        message["refusal"] = c.refusal
    if c.calls:
        message["tool_calls"] = list(c.calls)
    logprobs = ({"content": [_token_logprobs(t, req.top_logprobs) for t in c.content],
                 "refusal": None} if req.logprobs else None)
    return {"index": c.index, "message": message, "logprobs": logprobs,
            "finish_reason": c.finish_reason}
