"""Unit tests for the SSE decoder and the chat-completion assembler (pure logic, no I/O)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from services.processor.assembler import (
    ChoiceResult,
    Delta,
    ProviderError,
    StreamAssembler,
    ToolCall,
    assemble_completion,
    parse_error_body,
    parse_retry_after,
)
from services.processor.sse import SSEDecoder, SSEEvent


def decode(*chunks: bytes) -> list[SSEEvent]:
    """The events of a body fed in these chunks; the fast path and the strict decoder agree."""
    outs = []
    for fast in (True, False):
        dec = SSEDecoder(fast=fast)
        outs.append([e for c in chunks for e in dec.feed(c)] + dec.close())
    assert outs[0] == outs[1], "the fast path and the strict decoder differ"
    return outs[0]


def decode_bytewise(body: bytes) -> list[SSEEvent]:
    return decode(*(body[i : i + 1] for i in range(len(body))))


def datas(events: list[SSEEvent]) -> list[str]:
    return [e.data for e in events]


# --- decoder: line terminators ------------------------------------------------------------------
@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_terminator(eol: bytes) -> None:
    body = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert datas(decode(body)) == ["a\nb", "c"]


def test_mixed_terminators_in_one_stream() -> None:
    assert datas(decode(b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r")) == ["a\nb\nc", "d"]


def test_cr_at_chunk_end_followed_by_lf_is_one_line_end() -> None:
    # If the LF were a second terminator it would be a blank line and dispatch "a" alone.
    assert datas(decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n")) == ["a\nb"]


def test_cr_at_chunk_end_then_blank_line_dispatches_without_waiting() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\r\r") == [SSEEvent("a")]


def test_lone_cr_at_chunk_end_then_other_text() -> None:
    assert datas(decode(b"data: a\r", b"data: b\r", b"\r")) == ["a\nb"]


def test_cr_then_empty_chunk_then_lf() -> None:
    assert datas(decode(b"data: a\r", b"", b"\n", b"\n")) == ["a"]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1e"])
def test_only_cr_and_lf_end_lines(char: str) -> None:
    body = f'data: {{"content":" {char}x"}}\n\n'.encode()
    events = decode(body)
    assert datas(events) == [f'{{"content":" {char}x"}}']
    assert datas(decode_bytewise(body)) == datas(events)


# --- decoder: fields ------------------------------------------------------------------------------
def test_comments_are_ignored() -> None:
    body = b": keep-alive\n\n:\ndata: a\n: inside an event\ndata: b\n\n: OPENROUTER PROCESSING\n\n"
    assert datas(decode(body)) == ["a\nb"]


def test_multiline_data_with_empty_lines() -> None:
    body = b'data: {\ndata: "foo":\ndata: \ndata:\ndata: true}\n\n'
    (event,) = decode(body)
    assert event.data == '{\n"foo":\n\n\ntrue}'
    assert orjson.loads(event.data) == {"foo": True}


def test_only_one_space_after_colon_is_removed() -> None:
    assert datas(decode(b"data:a\n\ndata: b\n\ndata:  c\n\ndata:\td\n\n")) == [
        "a",
        "b",
        " c",
        "\td",
    ]


def test_data_field_split_right_after_colon() -> None:
    assert datas(decode(b"data:", b'{"x":1}\nretry:0\n\n')) == ['{"x":1}']
    assert datas(decode(b"data", b": ", b"v\n", b"\n")) == ["v"]


def test_line_without_colon_is_a_field_with_empty_value() -> None:
    # "data" alone appends an empty line; "......" is an unknown field and is ignored.
    assert datas(decode(b"data\ndata\n\n......\ndata: x\n\n")) == ["\n", "x"]


def test_blank_line_without_data_dispatches_nothing_and_resets_event_type() -> None:
    events = decode(b"event: ping\n\ndata: x\n\n")
    assert events == [SSEEvent(data="x", event="message")]


def test_event_type_applies_once() -> None:
    events = decode(b"event: ping\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n")
    assert [(e.event, e.data) for e in events] == [
        ("ping", "1"),
        ("message", "2"),
        ("message", "3"),
    ]


def test_id_persists_and_nul_id_is_ignored() -> None:
    dec = SSEDecoder()
    events = dec.feed(b"id: 7\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid\ndata: d\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "7"), ("b", "7"), ("c", "7"), ("d", "")]
    assert dec.last_event_id == ""


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"retry: 0", 0),
        (b"retry:1500", 1500),
        (b"retry: 1.5", None),
        (b"retry: -1", None),
        (b"retry: \xc2\xb2", None),
        (b"retry:", None),
        (b"retry: 10 ", None),
    ],
)
def test_retry_only_ascii_digits(line: bytes, expected: int | None) -> None:
    dec = SSEDecoder()
    (event,) = dec.feed(line + b"\ndata: x\n\n")
    assert event.retry == expected
    assert dec.retry == expected
    assert event.data == "x"  # retry is never data


def test_retry_belongs_to_its_event_but_persists_on_decoder() -> None:
    dec = SSEDecoder()
    events = dec.feed(b"data: a\nretry: 5\n\ndata: b\n\n")
    assert [e.retry for e in events] == [5, None]
    assert dec.retry == 5


def test_unknown_fields_are_ignored() -> None:
    assert datas(decode(b"foo: bar\nDATA: no\ndata : no\ndata: yes\n\n")) == ["yes"]


# --- decoder: chunking, UTF-8, BOM, EOF ----------------------------------------------------------
def test_split_inside_multibyte_utf8() -> None:
    body = 'data: {"content":"北京😊"}\n\n'.encode()
    start = body.index("京".encode())
    for cut in range(start, start + 7):
        assert datas(decode(body[:cut], body[cut:])) == ['{"content":"北京😊"}']


def test_invalid_utf8_becomes_replacement_char() -> None:
    assert datas(decode(b"data: a\xffb\n\n")) == ["a\ufffdb"]


@pytest.mark.parametrize(
    "chunks", [[b"\xef\xbb\xbfdata: a\n\n"], [b"\xef", b"\xbb", b"\xbfdata: a\n\n"]]
)
def test_leading_bom_is_stripped(chunks: list[bytes]) -> None:
    assert datas(decode(*chunks)) == ["a"]


def test_only_the_first_bom_is_stripped() -> None:
    # A second BOM makes the field name "\ufeffdata", an unknown field.
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []
    assert datas(decode(b"data: \xef\xbb\xbfa\n\n")) == ["\ufeffa"]


def test_short_stream_that_is_not_a_bom() -> None:
    assert datas(decode(b"\n", b"data: a\n\n")) == ["a"]
    assert datas(decode(b"d", b"a", b"ta: a\n\n")) == ["a"]


def test_unterminated_event_is_discarded_at_eof() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: a\n\ndata: b\n") == [SSEEvent("a")]
    assert dec.close() == []
    assert decode(b"data: a\n\ndata: [DONE]") == [SSEEvent("a")]


def test_decoder_can_be_reused_after_close() -> None:
    dec = SSEDecoder()
    dec.feed(b"data: half")
    dec.close()
    assert dec.feed(b"\xef\xbb\xbfdata: new\n\n") == [SSEEvent("new")]


SAMPLE = (
    "\ufeff: hi\r\nevent: ping\r\ndata: 1\r\n\r\nid: 9\rdata:北京\u2028x\r\rdata: a\n"
    "retry: 3\ndata\n\n: bye\r\ndata: tail"
).encode()


def test_bytewise_equals_whole() -> None:
    whole = decode(SAMPLE)
    assert [(e.event, e.data, e.id) for e in whole] == [
        ("ping", "1", None),
        ("message", "北京\u2028x", "9"),
        ("message", "a\n", "9"),
    ]
    assert decode_bytewise(SAMPLE) == whole


def test_every_two_way_split_equals_whole() -> None:
    whole = decode(SAMPLE)
    for cut in range(len(SAMPLE) + 1):
        assert decode(SAMPLE[:cut], SAMPLE[cut:]) == whole, cut


def test_random_chunks_equal_whole() -> None:
    rng = random.Random(1234)
    whole = decode(SAMPLE)
    for _ in range(200):
        chunks, i = [], 0
        while i < len(SAMPLE):
            n = rng.randint(0, 9)
            chunks.append(SAMPLE[i : i + n])
            i += n
        assert decode(*chunks) == whole


# --- assembler: helpers ---------------------------------------------------------------------------
def chunk(choices: list[dict[str, Any]] | None = None, **extra: Any) -> SSEEvent:
    payload: dict[str, Any] = {"object": "chat.completion.chunk", "model": "m", **extra}
    if choices is not None:
        payload["choices"] = choices
    return SSEEvent(orjson.dumps(payload).decode())


def choice(index: int = 0, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}


def feed(*events: SSEEvent) -> tuple[StreamAssembler, list[Delta]]:
    asm = StreamAssembler()
    deltas = [d for e in events for d in asm.add_event(e)]
    return asm, deltas


# --- assembler: text --------------------------------------------------------------------------
def test_content_reasoning_refusal_and_deltas() -> None:
    asm, deltas = feed(
        chunk([choice(role="assistant", content=None, reasoning_content="")]),
        chunk([choice(content=None, reasoning_content="think")]),
        chunk([choice(reasoning="ing")]),
        chunk([choice(content="Hi", reasoning_content=None)]),
        chunk([choice(content="", refusal="no")]),
        chunk([choice(finish="stop")]),
        SSEEvent("[DONE]"),
    )
    assert deltas == [
        Delta("reasoning", "think"),
        Delta("reasoning", "ing"),
        Delta("content", "Hi"),
        Delta("refusal", "no"),
    ]
    assert asm.result() == ChoiceResult(0, "Hi", "thinking", "no", [], "stop")
    assert asm.done and asm.finished
    assert asm.model == "m"


def test_reasoning_sent_in_both_fields_is_counted_once() -> None:
    asm, deltas = feed(chunk([choice(reasoning_content="x", reasoning="x")]))
    assert asm.result().reasoning == "x"
    assert deltas == [Delta("reasoning", "x")]


def test_choices_keyed_by_index_not_position() -> None:
    asm, deltas = feed(
        chunk([choice(2, content="c")]),
        chunk([choice(0, content="a")]),
        chunk([choice(1, content="b"), choice(2, content="C")]),
        chunk([choice(1, finish="length")]),
    )
    assert {i: c.content for i, c in asm.choices.items()} == {0: "a", 1: "b", 2: "cC"}
    # Choice 0's text goes as text deltas; every other choice's in its own choice deltas.
    assert [d for d in deltas if d.kind != "choice"] == [Delta("content", "a")]
    relayed = [orjson.loads(d.text) for d in deltas if d.kind == "choice"]
    assert {(r["index"], r["delta"]["content"]) for r in relayed} == {(1, "b"), (2, "c"),
                                                                       (2, "C")}
    assert asm.choices[1].finish_reason == "length"
    assert not asm.finished  # only choice 0 counts


def test_empty_choices_usage_chunk_does_not_raise() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    asm, _ = feed(chunk([choice(content="x", finish="stop")]), chunk([], usage=usage))
    assert asm.usage is not None
    assert (asm.usage.prompt_tokens, asm.usage.completion_tokens, asm.usage.total_tokens) == (
        3,
        2,
        5,
    )
    assert asm.usage.extra == usage


def test_usage_is_last_non_null_never_summed() -> None:
    asm, _ = feed(
        chunk(
            [choice(content="a")],
            usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        ),
        chunk(
            [choice(content="b")],
            usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        ),
        chunk([choice(finish="stop")], usage=None),
    )
    assert asm.usage is not None and asm.usage.total_tokens == 7


def test_usage_without_total_and_with_anthropic_names() -> None:
    asm, _ = feed(chunk([], usage={"input_tokens": 4, "output_tokens": 6}))
    assert asm.usage is not None
    assert (asm.usage.prompt_tokens, asm.usage.completion_tokens, asm.usage.total_tokens) == (
        4,
        6,
        10,
    )


def test_finish_reason_not_reset_by_later_chunk() -> None:
    asm, _ = feed(
        chunk([choice(finish="tool_calls")]),
        chunk([{"index": 0, "delta": {}}], usage={"prompt_tokens": 1, "total_tokens": 1}),
        chunk([choice(finish=None)]),
    )
    assert asm.result().finish_reason == "tool_calls"
    assert asm.finished


def test_unknown_finish_reason_passed_through() -> None:
    asm, _ = feed(chunk([choice(finish="insufficient_system_resource")]))
    assert asm.result().finish_reason == "insufficient_system_resource"


def test_bad_json_is_skipped_and_counted() -> None:
    asm, deltas = feed(
        chunk([choice(content="a")]),
        SSEEvent('{"choices":[]}\n{"choices":[]}'),
        SSEEvent("not json"),
        SSEEvent("[1, 2]"),
        chunk([choice(content="b")]),
    )
    assert asm.bad_events == 3
    assert asm.result().content == "ab"
    assert [d.text for d in deltas] == ["a", "b"]


def test_done_variants_and_events_after_done_are_ignored() -> None:
    asm, _ = feed(SSEEvent(" [DONE] "), chunk([choice(content="late")]))
    assert asm.done
    assert asm.result() == ChoiceResult(index=0)


def test_result_without_choices_is_empty() -> None:
    assert StreamAssembler().result() == ChoiceResult(0, "", "", "", [], None)


def test_non_message_event_without_choices_is_harmless() -> None:
    asm, deltas = feed(SSEEvent('{"foo": true}', event="ping"))
    assert deltas == [] and asm.choices == {} and asm.bad_events == 0


# --- assembler: tool calls --------------------------------------------------------------------
def tool(
    index: int | None, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict[str, Any]:
    fragment: dict[str, Any] = {"function": {}}
    if index is not None:
        fragment["index"] = index
    if id is not None:
        fragment.update(id=id, type="function")
    if name is not None:
        fragment["function"]["name"] = name
    if args is not None:
        fragment["function"]["arguments"] = args
    return fragment


def test_tool_call_fragments_assembled_by_index() -> None:
    asm, deltas = feed(
        chunk([choice(role="assistant", content=None)]),
        chunk([choice(tool_calls=[tool(0, "call_a", "f", "")])]),
        chunk([choice(tool_calls=[tool(0, args='{"x"')])]),
        chunk([choice(tool_calls=[tool(1, "call_b", "g", '{"y":')])]),
        chunk([choice(tool_calls=[tool(0, args=":1}"), tool(1, args="2}")])]),
        chunk([choice(finish="tool_calls")]),
    )
    assert asm.result().tool_calls == [
        ToolCall("call_a", "function", "f", '{"x":1}'),
        ToolCall("call_b", "function", "g", '{"y":2}'),
    ]
    # Relayed as choice deltas: each call's id, type and name once, then its arguments.
    assert [orjson.loads(d.text)["delta"]["tool_calls"] for d in deltas] == [
        [{"index": 0, "id": "call_a", "type": "function",
          "function": {"name": "f", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": '{"x"'}}],
        [{"index": 1, "id": "call_b", "type": "function",
          "function": {"name": "g", "arguments": '{"y":'}}],
        [{"index": 0, "function": {"arguments": ":1}"}},
         {"index": 1, "function": {"arguments": "2}"}}]]


def test_repeated_id_and_empty_name_do_not_start_or_rename_a_call() -> None:
    asm, _ = feed(
        chunk([choice(tool_calls=[tool(0, "call_a", "get_weather", "")])]),
        chunk([choice(tool_calls=[tool(0, "call_a", "", '{"a":1}')])]),
        chunk([choice(tool_calls=[tool(1, "call_a", "", "")])]),  # same id, new index
    )
    assert asm.result().tool_calls == [ToolCall("call_a", "function", "get_weather", '{"a":1}')]


def test_tool_fragments_without_index() -> None:
    asm, _ = feed(
        chunk([choice(tool_calls=[tool(None, "c1", "f", "{")])]),
        chunk([choice(tool_calls=[tool(None, args="}")])]),
        chunk([choice(tool_calls=[tool(None, "c2", "g", "[]")])]),
        chunk([choice(tool_calls=[tool(None, "c1", args="")])]),
    )
    assert [(t.id, t.name, t.arguments) for t in asm.result().tool_calls] == [
        ("c1", "f", "{}"),
        ("c2", "g", "[]"),
    ]


def test_tool_arguments_given_as_object() -> None:
    frag = {"index": 0, "id": "c", "function": {"name": "f", "arguments": {"a": 1}}}
    asm, _ = feed(chunk([choice(tool_calls=[frag])]))
    assert orjson.loads(asm.result().tool_calls[0].arguments) == {"a": 1}


# --- assembler: errors --------------------------------------------------------------------------
def test_mid_stream_error_raises_retryable_by_default() -> None:
    asm = StreamAssembler()
    asm.add_event(chunk([choice(content="a")]))
    with pytest.raises(ProviderError) as info:
        asm.add_event(SSEEvent('{"error": {"message": "upstream died", "code": "server_error"}}'))
    err = info.value
    # No HTTP-like number in the error: reported as 502, the gateway's "upstream failed".
    assert (err.status, err.message, err.code, err.retryable) == (
        502,
        "upstream died",
        "server_error",
        True,
    )


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ({"message": "m", "type": "invalid_request_error"}, False),
        ({"message": "m", "code": 400}, False),
        ({"message": "m", "code": 429}, True),
        ({"message": "m", "code": 502}, True),
        ("plain text", True),
    ],
)
def test_mid_stream_error_classification(error: object, retryable: bool) -> None:
    with pytest.raises(ProviderError) as info:
        StreamAssembler().add_event(SSEEvent(orjson.dumps({"error": error}).decode()))
    assert info.value.retryable is retryable


def test_error_event_type() -> None:
    with pytest.raises(ProviderError) as info:
        StreamAssembler().add_event(SSEEvent('{"message": "overloaded"}', event="error"))
    assert info.value.message == "overloaded"
    with pytest.raises(ProviderError) as info:
        StreamAssembler().add_event(SSEEvent("boom", event="error"))
    assert info.value.message == "boom"


def test_null_error_key_is_not_an_error() -> None:
    asm, _ = feed(chunk([choice(content="ok")], error=None))
    assert asm.result().content == "ok"


# --- non-streaming --------------------------------------------------------------------------
def test_assemble_completion_with_keepalive_blank_lines() -> None:
    body = b"\n\n\r\n  " + orjson.dumps(
        {
            "choices": [
                {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
                {
                    "index": 0,
                    "message": {
                        "content": None,
                        "reasoning": "r",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                },
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    )
    choices, usage = assemble_completion(body)
    assert choices[0] == ChoiceResult(
        0, "", "r", "", [ToolCall("c", "function", "f", "{}")], "tool_calls"
    )
    assert choices[1].content == "b" and choices[1].finish_reason == "length"
    assert usage is not None and usage.total_tokens == 3


def test_assemble_completion_content_parts_and_no_usage() -> None:
    body = orjson.dumps(
        {
            "choices": [
                {
                    "message": {
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
                    }
                }
            ]
        }
    )
    choices, usage = assemble_completion(body)
    assert choices[0].content == "ab" and usage is None


def test_assemble_completion_error_and_garbage() -> None:
    with pytest.raises(ProviderError) as info:
        assemble_completion(b'{"error": {"message": "quota", "type": "insufficient_quota"}}')
    assert info.value.message == "quota" and not info.value.retryable
    with pytest.raises(ProviderError) as info:
        assemble_completion(b"<html>502 Bad Gateway</html>")
    assert info.value.retryable


# --- error bodies ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (529, True),
        (400, False),
        (401, False),
        (402, False),
        (403, False),
        (404, False),
        (422, False),
        (413, False),
        (451, False),
    ],
)
def test_retryable_by_status(status: int, retryable: bool) -> None:
    err = parse_error_body(status, b'{"error": {"message": "m"}}')
    assert err.retryable is retryable
    assert err.status == status


def test_openai_envelope() -> None:
    body = (
        b'{"error":{"message":"Rate limit","type":"rate_limit_error","param":null,'
        b'"code":"rate_limit_exceeded"}}'
    )
    err = parse_error_body(429, body, "2")
    assert (err.message, err.type, err.code, err.retry_after) == (
        "Rate limit",
        "rate_limit_error",
        "rate_limit_exceeded",
        2.0,
    )


def test_string_error_envelope() -> None:
    err = parse_error_body(503, b'{"error": "Service Unavailable", "code": 503}')
    assert (err.message, err.code, err.retryable) == ("Service Unavailable", "503", True)


def test_siliconflow_envelope() -> None:
    err = parse_error_body(400, b'{"code":20012,"message":"Model does not exist.","data":null}')
    assert (err.message, err.code, err.type, err.retryable) == (
        "Model does not exist.",
        "20012",
        None,
        False,
    )


def test_fastapi_detail_and_missing_message() -> None:
    assert parse_error_body(422, b'{"detail": "bad"}').message == "bad"
    assert parse_error_body(500, b'{"error": {"code": 1}}').message == '{"error": {"code": 1}}'


def test_non_json_body_is_truncated() -> None:
    body = b"<html>\n<body>" + b"x" * 2000 + b"</body></html>"
    err = parse_error_body(502, body)
    assert len(err.message) <= 500
    assert err.message.startswith("<html> <body>xxx")
    assert err.retryable
    assert parse_error_body(504, b"").message == "HTTP 504"


def test_error_body_with_bom_and_whitespace() -> None:
    err = parse_error_body(401, b'\xef\xbb\xbf\n {"error": {"message": "Authentication Fails"}}')
    assert err.message == "Authentication Fails" and not err.retryable


def test_provider_error_str() -> None:
    err = parse_error_body(400, b'{"error": {"message": "Model Not Exist"}}')
    assert str(err) == "provider error (HTTP 400): Model Not Exist"
    # Without an HTTP status (a stall, a failed connection) the text must not invent one.
    stalled = ProviderError("provider stalled: ReadTimeout", code="idle_timeout")
    assert str(stalled) == "provider error (mid-stream): provider stalled: ReadTimeout"


NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("30", 30.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Wed, 01 Jan 2025 12:00:20 GMT", 20.0),
        ("Wed, 01 Jan 2025 11:00:00 GMT", 0.0),
        ("Wed, 01 Jan 2025 12:00:05 -0000", 5.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_retry_after_http_date_relative_to_real_clock() -> None:
    err = parse_error_body(429, b"{}", "Fri, 01 Jan 2100 00:00:00 GMT")
    assert err.retry_after is not None and err.retry_after > 0


# --- decoder: the fast path ---------------------------------------------------------------------
# Bodies at the edges of the fast path's shape: each must give the strict decoder's events (the
# decode helper checks), fed whole and split at every byte.
EDGES = [
    b"data: {}\n\ndata: {}\n\n",          # the common shape
    b"data:{}\n\n",                       # no space after the colon
    b"data:  two spaces\n\n",             # only one space is stripped
    b"data:\n\n",                         # empty data: still an event
    b"data: a\n\n\ndata: b\n\n",          # a blank line more
    b": keepalive\n\ndata: a\n\n",        # a comment
    b"event: x\ndata: a\n\ndata: b\n\n",  # another field
    b"id: 7\n\ndata: a\n\n",              # an id on its own, then data under it
    b"data: a\ndata: b\n\n",              # multi-line data
    b"data: a\r\n\r\ndata: b\n\n",        # CRLF
    b"retry: 5\ndata: a\n\ndata: b\n\n",  # retry
    b"error: boom\n\ndata: a\n\n",        # the non-standard error field
    b"data: \xe4\xb8\xad\xff\n\n",        # UTF-8 and an invalid byte
    b"dat: a\n\ndata: b\n\n",             # an unknown field
]


@pytest.mark.parametrize("body", EDGES)
def test_fast_path_edges_match_the_strict_decoder(body: bytes) -> None:
    whole = decode(body)
    for cut in range(1, len(body)):
        assert decode(body[:cut], body[cut:]) == whole
