"""Answers that are not answers, errors inside a 200, oversized lines and poison numbers.

Pure parser tests (no I/O): what the processor must refuse before anything reaches the store.
Each shape here was once stored as a success, or crashed the store write (issue 10).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.processor.assembler import (
    MAX_FINISH_REASON_CHARS,
    MAX_TOKEN_COUNT,
    ChoiceResult,
    ProviderError,
    StreamAssembler,
    assemble_completion,
    parse_error_body,
)
from services.processor.sse import MAX_LINE_BYTES, SSEDecoder, SSEEvent, SSELineTooLong


def stream(body: bytes) -> StreamAssembler:
    """Decode and assemble a whole stream body, as the provider module does."""
    asm, dec = StreamAssembler(), SSEDecoder()
    for ev in dec.feed(body) + dec.close():
        asm.add_event(ev)
    return asm


def final_of(body: bytes) -> ChoiceResult:
    return stream(body).final()


def data(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    return data({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


DONE = b"data: [DONE]\n\n"


# --- non-answers: streams -------------------------------------------------------------------------
def test_stream_of_only_done_is_an_empty_answer() -> None:
    with pytest.raises(ProviderError) as info:
        final_of(DONE)
    err = info.value
    assert (err.code, err.status, err.retryable) == ("empty_answer", 502, True)


def test_stream_of_unparseable_data_then_done_is_an_invalid_answer() -> None:
    with pytest.raises(ProviderError) as info:
        final_of(b"data: <html>oops</html>\n\ndata: {not json\n\n" + DONE)
    err = info.value
    assert (err.code, err.status, err.retryable) == ("invalid_answer", 502, True)
    assert "<html>oops</html>" in err.message  # what the provider sent, for whoever debugs it


def test_stream_of_chunks_without_choices_is_an_empty_answer() -> None:
    with pytest.raises(ProviderError) as info:
        final_of(data({"status": "ok"}) + DONE)
    assert info.value.code == "empty_answer"
    assert '"status":"ok"' in info.value.message.replace(" ", "")


def test_role_chunk_only_is_an_empty_answer() -> None:
    with pytest.raises(ProviderError) as info:
        final_of(data({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}) + DONE)
    assert info.value.code == "empty_answer"


def test_usage_only_stream_is_an_empty_answer() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}
    with pytest.raises(ProviderError) as info:
        final_of(data({"choices": [], "usage": usage}) + DONE)
    assert info.value.code == "empty_answer"


def test_empty_content_with_finish_reason_is_an_answer() -> None:
    # A model may legitimately say nothing (max_tokens=0, a stop sequence at once).
    assert final_of(chunk("", "stop") + DONE).finish_reason == "stop"


def test_content_without_finish_reason_is_an_answer() -> None:
    assert final_of(chunk("hi") + DONE).content == "hi"


# --- non-answers: JSON bodies ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{}", "empty_answer"),
        (b'{"status": "ok"}', "empty_answer"),
        (b'{"choices": []}', "empty_answer"),
        (b'{"choices": [{"index": 0, "message": {"role": "assistant"}}]}', "empty_answer"),
        (b'{"choices": [{"index": 3, "message": {"content": "x"}, "finish_reason": "stop"}]}',
         "empty_answer"),
        (b"<html>health ok</html>", "invalid_answer"),
        (b"[1, 2]", "invalid_answer"),
        (b"", "invalid_answer"),
    ],
)
def test_json_non_answers_fail(body: bytes, code: str) -> None:
    with pytest.raises(ProviderError) as info:
        assemble_completion(body)
    err = info.value
    assert (err.code, err.status, err.retryable) == (code, 502, True)


def test_json_answer_with_finish_reason_and_empty_content_is_an_answer() -> None:
    body = b'{"choices": [{"index": 0, "message": {"content": ""}, "finish_reason": "stop"}]}'
    choices, _ = assemble_completion(body)
    assert choices[0].finish_reason == "stop"


# --- errors inside a 200 stream -------------------------------------------------------------------
def test_data_object_with_error_keeps_message_and_numeric_status() -> None:
    body = chunk("partial") + data({"error": {"message": "overloaded", "code": 503}})
    with pytest.raises(ProviderError) as info:
        stream(body)
    err = info.value
    assert (err.message, err.status, err.retryable) == ("overloaded", 503, True)


def test_error_without_numeric_status_reports_502() -> None:
    with pytest.raises(ProviderError) as info:
        stream(data({"error": {"message": "upstream died", "code": "server_error"}}))
    assert (info.value.status, info.value.code, info.value.retryable) == (
        502, "server_error", True)


def test_status_given_as_a_numeric_string_is_used() -> None:
    with pytest.raises(ProviderError) as info:
        stream(data({"error": {"message": "slow down", "status": "429"}}))
    assert (info.value.status, info.value.retryable) == (429, True)


def test_event_error_with_json_data() -> None:
    body = b'event: error\ndata: {"message": "model crashed", "code": 500}\n\n'
    with pytest.raises(ProviderError) as info:
        stream(body)
    assert (info.value.message, info.value.status) == ("model crashed", 500)


def test_event_error_with_text_data() -> None:
    with pytest.raises(ProviderError) as info:
        stream(b"event: error\ndata: internal failure\n\n")
    assert (info.value.message, info.value.status) == ("internal failure", 502)


def test_vllm_error_object_in_stream() -> None:
    # vLLM's ErrorResponse, streamed as a data payload: no "error" key, "object": "error".
    payload = {"object": "error", "message": "This model's maximum context length is 4096 "
               "tokens. However, you requested 5000 tokens.", "type": "BadRequestError",
               "param": None, "code": 400}
    with pytest.raises(ProviderError) as info:
        stream(chunk("a") + data(payload))
    err = info.value
    assert (err.status, err.retryable) == (400, False)
    assert err.message.startswith("This model's maximum context length")


def test_non_standard_error_field() -> None:
    # A field named "error" is not SSE; the spec says ignore it, but it is the provider's only
    # word that the answer failed. Without data, a strict decoder would dispatch nothing.
    body = chunk("a") + b'error: {"message": "quota exhausted", "code": 429}\n\n'
    with pytest.raises(ProviderError) as info:
        stream(body)
    assert (info.value.message, info.value.status, info.value.retryable) == (
        "quota exhausted", 429, True)


def test_non_standard_error_field_with_text() -> None:
    with pytest.raises(ProviderError) as info:
        stream(b"error: upstream reset\n\n")
    assert (info.value.message, info.value.status) == ("upstream reset", 502)


def test_decoder_reports_the_error_field() -> None:
    (ev,) = SSEDecoder().feed(b"error: a\nerror: b\n\n")
    assert (ev.data, ev.error) == ("", "a\nb")


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"error": {"message": "gone", "code": 502}}\ndata: [DONE]\n\n',
        b'data: {"error": {"message": "gone", "code": 502}}[DONE]\n\n',
        b'data: {"error": {"message": "gone", "code": 502}} [DONE]\n\n',
    ],
)
def test_error_and_done_merged_in_one_event(body: bytes) -> None:
    with pytest.raises(ProviderError) as info:
        stream(chunk("a") + body)
    assert (info.value.message, info.value.status) == ("gone", 502)


def test_chunk_and_done_merged_in_one_event_still_finishes() -> None:
    body = chunk("a") + b'data: {"choices":[{"index":0,"delta":{"content":"b"},' \
        b'"finish_reason":"stop"}]}\ndata: [DONE]\n\n'
    asm = stream(body)
    assert asm.done and asm.final().content == "ab" and asm.bad_events == 0


def test_error_merged_with_a_chunk_in_one_event() -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"b"}}]}\n' \
        b'data: {"error": {"message": "cut short"}}\n\n'
    with pytest.raises(ProviderError) as info:
        stream(body)
    assert info.value.message == "cut short"


# --- context length: never retried ----------------------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        {"message": "too long", "code": "context_length_exceeded"},
        {"message": "This model's maximum context length is 8192 tokens.", "code": 500},
        {"message": "the request exceeds the available context size", "type": "server_error"},
        {"message": "prompt is too long: 200001 tokens > 200000 maximum"},
    ],
)
def test_context_length_errors_are_not_retried_in_stream(error: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as info:
        stream(data({"error": error}))
    assert info.value.retryable is False


@pytest.mark.parametrize("status", [400, 500, 503])
def test_context_length_error_bodies_are_not_retried(status: int) -> None:
    body = b'{"error": {"message": "maximum context length is 4096 tokens", "code": null}}'
    err = parse_error_body(status, body)
    assert (err.status, err.retryable) == (status, False)


def test_plain_server_error_stays_retryable() -> None:
    assert parse_error_body(500, b'{"error": {"message": "oops"}}').retryable


# --- line cap -------------------------------------------------------------------------------------
def test_default_line_cap_is_one_mib() -> None:
    assert MAX_LINE_BYTES == 1 << 20


def test_line_at_the_cap_is_accepted_and_one_byte_more_is_not() -> None:
    dec = SSEDecoder(max_line_bytes=16)
    assert dec.feed(b"data: 0123456789\n\n") == [SSEEvent("0123456789")]  # 16 bytes
    with pytest.raises(SSELineTooLong):
        SSEDecoder(max_line_bytes=16).feed(b"data: 0123456789A\n\n")


def test_endless_line_fails_without_buffering_it_all() -> None:
    dec = SSEDecoder(max_line_bytes=1000)
    piece = b"x" * 300
    dec.feed(b"data: ")
    with pytest.raises(SSELineTooLong):
        for _ in range(10):
            dec.feed(piece)
    assert len(dec._pending) <= 1000 + len(piece)


def test_long_line_across_chunks_ending_in_a_terminator() -> None:
    dec = SSEDecoder(max_line_bytes=10)
    dec.feed(b"data: 1234")
    with pytest.raises(SSELineTooLong):
        dec.feed(b"56789\n\n")


def test_many_short_lines_in_one_big_chunk_are_fine() -> None:
    body = b"".join(b"data: %d\n\n" % i for i in range(1000))
    assert len(SSEDecoder(max_line_bytes=16).feed(body)) == 1000


# --- poison numbers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (2**63, MAX_TOKEN_COUNT),
        (2**64 - 1, MAX_TOKEN_COUNT),
        (1e300, MAX_TOKEN_COUNT),
        (-5, 0),
        (12.7, 12),
        ("12", 0),
        (True, 0),
        (None, 0),
        (0.001, 0),
        ([1], 0),
        (42, 42),
    ],
)
def test_usage_numbers_are_clamped(raw: object, expected: int) -> None:
    usage = {"prompt_tokens": raw, "completion_tokens": raw, "total_tokens": raw}
    body = chunk("a", "stop") + data({"choices": [], "usage": usage}) + DONE
    asm = stream(body)
    assert asm.usage is not None
    assert (asm.usage.prompt_tokens, asm.usage.completion_tokens, asm.usage.total_tokens) == (
        expected, expected, expected)


def test_missing_total_is_the_clamped_sum() -> None:
    choices_usage = {"prompt_tokens": 2**62, "completion_tokens": 2**62}
    body = orjson.dumps({"choices": [{"index": 0, "message": {"content": "a"},
                                      "finish_reason": "stop"}], "usage": choices_usage})
    _, usage = assemble_completion(body)
    assert usage is not None and usage.total_tokens == MAX_TOKEN_COUNT


def test_finish_reason_is_bounded() -> None:
    asm = stream(chunk("a", "x" * 10_000) + DONE)
    assert asm.final().finish_reason == "x" * MAX_FINISH_REASON_CHARS
    body = orjson.dumps({"choices": [{"index": 0, "message": {"content": "a"},
                                      "finish_reason": "y" * 500}]})
    choices, _ = assemble_completion(body)
    assert choices[0].finish_reason == "y" * MAX_FINISH_REASON_CHARS


def test_error_code_and_type_are_bounded() -> None:
    err = parse_error_body(400, orjson.dumps({"error": {"message": "m", "code": "c" * 5000,
                                                        "type": {"deep": "t" * 5000}}}))
    assert err.code is not None and len(err.code) <= 200
    assert err.type is not None and len(err.type) <= 200
