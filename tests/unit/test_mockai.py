"""The mock provider over real HTTP: aiohttp TestServer on a free port, httpx as client."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from harness.processes import CLIENT_TLS
from harness.waiting import until
from services.mockai.app import create_app
from services.mockai.settings import ConfigError, MockSettings
from services.processor.assembler import (
    ProviderError,
    StreamAssembler,
    assemble_completion,
)
from services.processor.sse import SSEDecoder, SSELineTooLong
from shared.config import MOCK_HEADER, Secret
from tests.unit.conftest import FAST, Start

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Explain queues in one line please"},
]
PROMPT_WORDS = 3 + 6


def sse_events(raw: str) -> list[Any]:
    """Tiny SSE reader: one `data:` line per event; "[DONE]" kept as a string."""
    events: list[Any] = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


def body(stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-r1", "messages": MESSAGES, "stream": stream, **extra}


def mock(**opts: Any) -> dict[str, Any]:
    return {"metadata": {"mock": opts}}


async def records(client: httpx.AsyncClient, base: str, tag: str | None = None) -> list[Any]:
    params = {"tag": tag} if tag else None
    r = await client.get(f"{base}/mock/requests", params=params)
    assert r.status_code == 200
    result: list[Any] = r.json()["requests"]
    return result


def split_stream(events: list[Any]) -> tuple[str, str]:
    """(reasoning, content) concatenated from token chunks, checking R1 ordering."""
    reasoning, content, seen_content = [], [], False
    for ev in events:
        if not isinstance(ev, dict) or not ev.get("choices"):
            continue
        delta = ev["choices"][0]["delta"]
        if delta.get("reasoning_content"):
            assert not seen_content, "reasoning after content"
            reasoning.append(delta["reasoning_content"])
        if delta.get("content"):
            seen_content = True
            content.append(delta["content"])
    return "".join(reasoning), "".join(content)


# --- happy path ------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_shape(base: str, client: httpx.AsyncClient, include_usage: bool) -> None:
    req = body(stream_options={"include_usage": include_usage})
    r = await client.post(f"{base}/v1/chat/completions", json=req)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and r.headers["x-request-id"] in ids
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "mock-r1" for c in chunks)

    role = chunks[0]["choices"][0]
    assert role == {
        "index": 0,
        "delta": {"role": "assistant", "content": None, "reasoning_content": ""},
        "finish_reason": None,
    }
    tokens = chunks[1 : 1 + 12 + 24]
    assert [c["choices"][0]["delta"]["content"] for c in tokens[:12]] == [None] * 12
    assert all(c["choices"][0]["delta"]["reasoning_content"] for c in tokens[:12])
    assert [c["choices"][0]["delta"]["reasoning_content"] for c in tokens[12:]] == [None] * 24
    assert all(c["choices"][0]["finish_reason"] is None for c in tokens)

    finish = chunks[1 + 36]
    assert finish["choices"][0]["delta"] == {"content": ""}
    assert finish["choices"][0]["finish_reason"] == "stop"
    expected_usage = {
        "prompt_tokens": PROMPT_WORDS,
        "completion_tokens": 36,
        "total_tokens": PROMPT_WORDS + 36,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    assert finish["usage"] == expected_usage
    if include_usage:
        assert len(chunks) == 1 + 36 + 2
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == expected_usage
    else:
        assert len(chunks) == 1 + 36 + 1

    reasoning, content = split_stream(events)
    assert len(content.split(" ")) == 24 and not content.startswith(" ")
    assert len(reasoning.split(" ")) == 12
    (rec,) = await records(client, base)
    assert rec["outcome"] == "completed" and rec["stream"] and rec["status"] == 200
    assert rec["content"] == content and rec["reasoning"] == reasoning
    assert rec["tokens_sent"] == 36 and rec["disconnected"] is False
    assert rec["finish_reason"] == "stop" and rec["finished_at"] >= rec["started_at"]


async def test_deterministic_and_prompt_dependent(base: str, client: httpx.AsyncClient) -> None:
    url = f"{base}/chat/completions"  # the un-prefixed alias works too
    a = split_stream(sse_events((await client.post(url, json=body())).text))
    b = split_stream(sse_events((await client.post(url, json=body())).text))
    assert a == b
    other = body(messages=[{"role": "user", "content": "something else entirely"}])
    c = split_stream(sse_events((await client.post(url, json=other)).text))
    assert c != a
    # Non-streaming answers carry the very same text.
    msg = (await client.post(url, json=body(stream=False))).json()["choices"][0]["message"]
    assert (msg["reasoning_content"], msg["content"]) == a
    # Reasoning length does not perturb the content words.
    d = split_stream(
        sse_events((await client.post(url, json=body(**mock(reasoning_tokens=3)))).text)
    )
    assert d[1] == a[1] and a[0].startswith(d[0])


async def test_vary_answers_each_call_differently(base: str, client: httpx.AsyncClient) -> None:
    """What a real provider at temperature > 0 does on a retry: the same prompt, other words."""
    url = f"{base}/v1/chat/completions"
    calls = [split_stream(sse_events((await client.post(url, json=body(**mock(vary=True)))).text))
             for _ in range(3)]
    plain = split_stream(sse_events((await client.post(url, json=body())).text))
    assert len({c[1] for c in calls} | {plain[1]}) == 4
    assert len({c[0] for c in calls} | {plain[0]}) == 4
    assert all(len(c[1].split()) == len(plain[1].split()) for c in calls)
    bad = await client.post(url, json=body(**mock(vary=1)))
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "metadata.mock.vary must be a boolean"


async def test_max_tokens_truncates_with_length(base: str, client: httpx.AsyncClient) -> None:
    url = f"{base}/v1/chat/completions"
    full = split_stream(sse_events((await client.post(url, json=body())).text))[1]
    r = await client.post(url, json=body(max_tokens=5))
    events = sse_events(r.text)
    content = split_stream(events)[1]
    assert len(content.split(" ")) == 5 and full.startswith(content)
    finish = events[-2]
    assert finish["choices"][0]["finish_reason"] == "length"
    assert finish["usage"]["completion_tokens"] == 12 + 5
    # A cap above the answer length changes nothing.
    r = await client.post(url, json=body(stream=False, max_tokens=1000))
    assert r.json()["choices"][0]["finish_reason"] == "stop"


async def test_non_streaming_shape(base: str, client: httpx.AsyncClient) -> None:
    r = await client.post(f"{base}/v1/chat/completions", json=body(stream=False, max_tokens=4))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["object"] == "chat.completion" and doc["id"] == r.headers["x-request-id"]
    (choice,) = doc["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split(" ")) == 4
    assert len(choice["message"]["reasoning_content"].split(" ")) == 12
    assert doc["usage"] == {
        "prompt_tokens": PROMPT_WORDS,
        "completion_tokens": 16,
        "total_tokens": PROMPT_WORDS + 16,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    (rec,) = await records(client, base)
    assert rec["stream"] is False and rec["content"] == choice["message"]["content"]


async def test_pacing_and_overrides(base: str, client: httpx.AsyncClient) -> None:
    # 150 ms to first token, then 4 more tokens at 50/s = 80 ms.
    req = body(**mock(ttft_ms=150, tokens_per_s=50, reasoning_tokens=0, content_tokens=5))
    arrivals: list[float] = []
    t0 = time.monotonic()
    async with client.stream("POST", f"{base}/v1/chat/completions", json=req) as r:
        buf = ""
        async for text in r.aiter_text():
            buf += text
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                ev = sse_events(block + "\n\n")[0]
                if (
                    isinstance(ev, dict)
                    and ev["choices"]
                    and ev["choices"][0]["delta"].get("content")
                ):
                    arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 5
    # Not before its time; how late a loaded machine delivers it is not the mock's to promise.
    assert arrivals[0] >= 0.14
    assert arrivals[-1] - arrivals[0] >= 0.07


async def test_models_and_health(base: str, client: httpx.AsyncClient) -> None:
    r = await client.get(f"{base}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await client.get(f"{base}/v1/models")
    doc = r.json()
    assert doc["object"] == "list" and doc["data"][0]["id"] == "mock-r1"
    assert doc["data"][0]["object"] == "model"


# --- errors and settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "invalid_json"),
        (b'{"model": "m"}', "missing_required_parameter"),
        (b'{"messages": []}', "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "invalid_value"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"mock": {"nope": 1}}}',
            "invalid_value",
        ),
    ],
)
async def test_bad_request_envelope(
    base: str, client: httpx.AsyncClient, payload: bytes, code: str
) -> None:
    r = await client.post(
        f"{base}/v1/chat/completions",
        content=payload,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] is None
    assert err["code"] == code and err["message"]


async def test_no_stream_setting(start: Start, client: httpx.AsyncClient) -> None:
    base = await start(MockSettings(ttft_ms=0, tokens_per_s=0, no_stream=True))
    r = await client.post(f"{base}/v1/chat/completions", json=body(stream=True))
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["object"] == "chat.completion"


async def test_auth(start: Start, client: httpx.AsyncClient) -> None:
    base = await start(MockSettings(ttft_ms=0, tokens_per_s=0, api_key=Secret("sekrit")))
    url = f"{base}/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = await client.post(url, json=body(), headers=headers)
        assert r.status_code == 401
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and err["param"] is None
    models = await client.get(f"{base}/v1/models")
    assert models.status_code == 401
    # It names itself even to a caller without the key: Sluice's edge asks without one.
    assert models.headers[MOCK_HEADER] == "mockai"
    ok = await client.post(url, json=body(), headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200 and sse_events(ok.text)[-1] == "[DONE]"
    assert (await client.get(f"{base}/health")).status_code == 200  # probes need no key


def test_settings_defaults_and_env() -> None:
    assert MockSettings.from_env({}) == MockSettings()
    s = MockSettings.from_env(
        {
            "MOCKAI_PORT": "0",
            "MOCKAI_TTFT_MS": "1.5",
            "MOCKAI_TOKENS_PER_S": "0",
            "MOCKAI_NO_STREAM": "yes",
            "MOCKAI_API_KEY": "k",
            "MOCKAI_MODEL": "",  # empty means unset
        }
    )
    assert (s.port, s.ttft_ms, s.tokens_per_s, s.no_stream, s.api_key, s.model) == (
        0,
        1.5,
        0.0,
        True,
        Secret("k"),
        "mock-r1",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MOCKAI_PORT", "x"),
        ("MOCKAI_PORT", "70000"),
        ("MOCKAI_TTFT_MS", "soon"),
        ("MOCKAI_TOKENS_PER_S", "-1"),
        ("MOCKAI_CONTENT_TOKENS", "1.5"),
        ("MOCKAI_NO_STREAM", "maybe"),
    ],
)
def test_bad_env_raises_config_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        MockSettings.from_env({name: value})
    assert str(info.value).startswith(f"{name}: ") and repr(value) in str(info.value)
    assert "\n" not in str(info.value)


# --- faults ----------------------------------------------------------------------------


async def test_status_fault_times_key_then_success(base: str, client: httpx.AsyncClient) -> None:
    fault = {"status": 429, "retry_after": "1", "message": "slow down", "times": 2, "key": "abc"}
    req = body(**mock(fault=fault, tag="t-429"))
    url = f"{base}/v1/chat/completions"
    for _ in range(2):
        r = await client.post(url, json=req)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json() == {
            "error": {
                "message": "slow down",
                "type": "rate_limit_error",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    r = await client.post(url, json=req)
    assert r.status_code == 200 and sse_events(r.text)[-1] == "[DONE]"

    recs = await records(client, base, tag="t-429")
    assert [x["status"] for x in recs] == [429, 429, 200]
    assert [x["fault"] for x in recs] == ["status", "status", None]
    assert all(x["fault_key"] == "abc" for x in recs)

    # Reset clears the per-key counter: the script starts over.
    r = await client.post(f"{base}/mock/reset")
    assert r.json()["status"] == "ok"
    assert await records(client, base) == []
    assert (await client.post(url, json=req)).status_code == 429


async def test_fault_header_wins(base: str, client: httpx.AsyncClient) -> None:
    req = body(**mock(fault={"status": 500}))
    r = await client.post(
        f"{base}/v1/chat/completions",
        json=req,
        headers={"X-Mock-Fault": '{"status": 503, "retry_after": 7}'},
    )
    assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 200},
        {"cut_after": -1},
        {"json": True, "cut_after": 1},
        {"stall_after": 1, "x": 1},
        {"headers": {"x-ratelimit-remaining-requests": 0}},
        {"content_type": ""},
    ],
)
async def test_invalid_fault_rejected(
    base: str, client: httpx.AsyncClient, fault: dict[str, Any]
) -> None:
    r = await client.post(f"{base}/v1/chat/completions", json=body(**mock(fault=fault)))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_mock_fault"


async def test_json_fault(base: str, client: httpx.AsyncClient) -> None:
    r = await client.post(f"{base}/v1/chat/completions", json=body(**mock(fault={"json": True})))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json()["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("stream", [True, False])
async def test_headers_fault_adds_headers_to_a_normal_answer(
    base: str, client: httpx.AsyncClient, stream: bool
) -> None:
    far = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "999999h"}
    r = await client.post(f"{base}/v1/chat/completions",
                          json=body(stream=stream, **mock(fault={"headers": far})))
    assert r.status_code == 200
    assert {k: r.headers[k] for k in far} == far
    done = sse_events(r.text)[-1] == "[DONE]" if stream else r.json()["choices"]
    assert done


async def test_content_type_fault_labels_a_normal_stream(
    base: str, client: httpx.AsyncClient
) -> None:
    r = await client.post(f"{base}/v1/chat/completions",
                          json=body(**mock(fault={"content_type": "text/plain"})))
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain"
    assert sse_events(r.text)[-1] == "[DONE]"


async def test_cut_after_breaks_stream(base: str, client: httpx.AsyncClient) -> None:
    req = body(**mock(fault={"cut_after": 3}, tag="cut"))
    raw = ""
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", f"{base}/v1/chat/completions", json=req) as r:
            assert r.status_code == 200
            async for text in r.aiter_text():
                raw += text
    assert "[DONE]" not in raw and '"finish_reason":"stop"' not in raw
    reasoning, content = split_stream(sse_events(raw))
    assert len(content.split(" ")) == 3 and len(reasoning.split(" ")) == 12
    (rec,) = await records(client, base, tag="cut")
    assert rec["outcome"] == "cut" and rec["content"] == content and rec["disconnected"] is False


async def test_cut_non_streaming(base: str, client: httpx.AsyncClient) -> None:
    req = body(stream=False, **mock(fault={"cut_after": 0}))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(f"{base}/v1/chat/completions", json=req)


async def test_stall_then_client_gives_up(base: str, client: httpx.AsyncClient) -> None:
    req = body(**mock(fault={"stall_after": 2}, tag="stall"))
    raw = ""
    async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=0.5), verify=CLIENT_TLS) as c:
        t0 = time.time()
        with pytest.raises(httpx.ReadTimeout):
            async with c.stream("POST", f"{base}/v1/chat/completions", json=req) as r:
                async for text in r.aiter_text():
                    raw += text
        gave_up = time.time()
    assert gave_up - t0 >= 0.5
    assert split_stream(sse_events(raw))[1].count(" ") == 1  # two content tokens
    rec = await wait_for_disconnect(client, base, "stall")
    assert gave_up - 0.1 <= rec["disconnected_at"] <= time.time()
    assert rec["content_tokens_sent"] == 2


async def test_stall_resumes(base: str, client: httpx.AsyncClient) -> None:
    req = body(**mock(fault={"stall_after": 1, "stall_s": 0.3}))
    t0 = time.monotonic()
    r = await client.post(f"{base}/v1/chat/completions", json=req)
    assert time.monotonic() - t0 >= 0.3
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and len(split_stream(events)[1].split(" ")) == 24


async def test_error_in_stream(base: str, client: httpx.AsyncClient) -> None:
    req = body(**mock(fault={"error_in_stream_after": 4, "message": "boom"}, tag="err"))
    r = await client.post(f"{base}/v1/chat/completions", json=req)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events
    assert events[-1] == {"error": {"message": "boom", "type": "server_error", "code": 500}}
    assert len(split_stream(events)[1].split(" ")) == 4
    (rec,) = await records(client, base, tag="err")
    assert rec["outcome"] == "stream_error"


# --- broken 200 answers and poison numbers ----------------------------------------------
def assembled(raw: bytes, content_type: str) -> Any:
    """Run a 200 body through the processor's own parser; return what it makes of it."""
    if content_type.startswith("application/json"):
        return assemble_completion(raw)
    dec, asm = SSEDecoder(), StreamAssembler()
    for ev in dec.feed(raw) + dec.close():
        asm.add_event(ev)
    return asm.final()


@pytest.mark.parametrize(
    ("shape", "content_type", "code", "status"),
    [
        ("empty_json", "application/json", "empty_answer", 502),
        ("no_choices", "application/json", "empty_answer", 502),
        ("only_done", "text/event-stream", "empty_answer", 502),
        ("unparseable", "text/event-stream", "invalid_answer", 502),
        ("error_data", "text/event-stream", "418", 418),
        ("error_event", "text/event-stream", "418", 418),
        ("error_field", "text/event-stream", "418", 418),
        ("error_done", "text/event-stream", "418", 418),
        ("object_error", "text/event-stream", "418", 418),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_answer_fault_shapes(
    base: str, client: httpx.AsyncClient, shape: str, content_type: str, code: str,
    status: int, stream: bool,
) -> None:
    fault = {"answer": shape, "message": f"says {shape}", "code": 418}
    req = body(stream=stream, **mock(fault=fault, tag=f"a-{shape}"))
    r = await client.post(f"{base}/v1/chat/completions", json=req)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(content_type)
    with pytest.raises(ProviderError) as info:
        assembled(r.content, content_type)
    assert (info.value.code, info.value.status) == (code, status)
    if code == "418":
        assert info.value.message == f"says {shape}"
    (rec,) = await records(client, base, tag=f"a-{shape}")
    assert (rec["outcome"], rec["status"], rec["fault"]) == ("bad_answer", 200, "answer")


async def test_only_done_is_exactly_done(base: str, client: httpx.AsyncClient) -> None:
    r = await client.post(f"{base}/v1/chat/completions",
                          json=body(**mock(fault={"answer": "only_done"})))
    assert r.content == b"data: [DONE]\n\n"


async def test_endless_line_until_the_client_leaves(
    base: str, client: httpx.AsyncClient
) -> None:
    req = body(**mock(fault={"answer": "endless_line"}, tag="endless"))
    received = 0
    async with client.stream("POST", f"{base}/v1/chat/completions", json=req) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        async for raw in r.aiter_raw():
            assert b"\n" not in raw
            received += len(raw)
            if received > 4 << 20:
                break
    assert received > 4 << 20
    await wait_for_disconnect(client, base, "endless")


async def test_endless_line_trips_the_line_cap(base: str, client: httpx.AsyncClient) -> None:
    req = body(**mock(fault={"answer": "endless_line"}))
    dec = SSEDecoder(max_line_bytes=1 << 20)
    with pytest.raises(SSELineTooLong):
        async with client.stream("POST", f"{base}/v1/chat/completions", json=req) as r:
            async for raw in r.aiter_raw():
                dec.feed(raw)


POISON = {"prompt_tokens": 2**63, "completion_tokens": -5, "total_tokens": "lots"}


@pytest.mark.parametrize("stream", [True, False])
async def test_usage_fault_replaces_usage(
    base: str, client: httpx.AsyncClient, stream: bool
) -> None:
    req = body(stream=stream, stream_options={"include_usage": True},
               **mock(fault={"usage": POISON}))
    r = await client.post(f"{base}/v1/chat/completions", json=req)
    assert r.status_code == 200
    if stream:
        usages = [e["usage"] for e in sse_events(r.text) if isinstance(e, dict) and e.get("usage")]
        assert usages and all(u == POISON for u in usages)
        assert sse_events(r.text)[-1] == "[DONE]"
    else:
        assert r.json()["usage"] == POISON and r.json()["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "fault",
    [
        {"answer": "nope"},
        {"answer": "only_done", "stall_s": 1},
        {"answer": "error_data", "code": True},
        {"usage": 5},
        {"usage": {}, "message": "x"},
    ],
)
async def test_invalid_answer_faults_rejected(
    base: str, client: httpx.AsyncClient, fault: dict[str, Any]
) -> None:
    r = await client.post(f"{base}/v1/chat/completions", json=body(**mock(fault=fault)))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_mock_fault"


# --- disconnects -----------------------------------------------------------------------


async def wait_for_disconnect(client: httpx.AsyncClient, base: str, tag: str) -> Any:
    """The mock's record of the call tagged ``tag``, once it has seen the client go."""
    async def disconnected() -> Any:
        (rec,) = await records(client, base, tag=tag)
        return rec if rec["disconnected"] else None
    rec = await until(disconnected, 5, f"the mock to record call {tag!r} as disconnected",
                      interval=0.02)
    assert rec["outcome"] == "disconnected"
    assert rec["finished_at"] == rec["disconnected_at"]
    return rec


async def read_then_close(base: str, req: dict[str, Any], n_events: int) -> float:
    """Read `n_events` SSE events, then drop the connection; returns the time of the drop."""
    async with httpx.AsyncClient(timeout=10, verify=CLIENT_TLS) as c:
        async with c.stream("POST", f"{base}/v1/chat/completions", json=req) as r:
            seen = 0
            async for text in r.aiter_text():
                seen += text.count("\n\n")
                if seen >= n_events:
                    break
        return time.time()


async def test_disconnect_recorded(base: str, client: httpx.AsyncClient) -> None:
    req = body(**mock(tokens_per_s=20, ttft_ms=0, tag="gone"))
    closed_at = await read_then_close(base, req, 4)
    rec = await wait_for_disconnect(client, base, "gone")
    assert closed_at - 0.05 <= rec["disconnected_at"] <= closed_at + 1.0
    assert 3 <= rec["tokens_sent"] < 36
    assert rec["finish_reason"] is None


async def test_disconnect_detected_without_handler_cancellation(
    client: httpx.AsyncClient,
) -> None:
    # Runners that do not cancel handlers still get the disconnect, via the transport poll.
    runner = web.AppRunner(create_app(FAST))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        req = body(**mock(fault={"stall_after": 1}, tag="poll"))
        closed_at = await read_then_close(base, req, 1 + 12 + 1)
        rec = await wait_for_disconnect(client, base, "poll")
        assert closed_at - 0.05 <= rec["disconnected_at"] <= closed_at + 1.0
    finally:
        await runner.cleanup()
