"""Every file of the provider corpus must decode to exactly what SOURCES.md says.

The corpus is kept in the repository, byte for byte as captured (``tests/fixtures/sse-corpus``;
override with ``SLUICE_SSE_CORPUS``). A missing folder is a failure, not a skip: these captures
are the only evidence that the parser copes with real providers. ``EXPECTED`` has one entry per
file, and a guard test fails when a file appears without expectations (or an entry loses its
file).

Each ``.sse`` body is fed whole, in random small chunks (fixed seed) and byte by byte, and file
13 also in the network reads it was captured with; every way must give the same events and the
same assembled result. Every stream test runs twice: on the decoder as the processor uses it
(its byte-level fast path on) and on the strict decoder alone.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest

from services.processor.assembler import (
    ChoiceResult,
    Delta,
    ProviderError,
    StreamAssembler,
    Usage,
    assemble_completion,
    parse_error_body,
)
from services.processor.sse import SSEDecoder, SSEEvent

CORPUS_ENV = "SLUICE_SSE_CORPUS"
DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "sse-corpus"
SEED = 20240926

Kind = Literal["stream", "events", "reads", "completion", "error", "doc"]
Tool = tuple[str, str, str]  # id, name, arguments


@dataclass(frozen=True)
class Expect:
    kind: Kind
    events: int | None = None  # number of SSE events a strict parser dispatches
    content: str | None = None
    content_prefix: str | None = None
    reasoning: str = ""
    reasoning_prefix: str | None = None
    refusal: str = ""
    tools: tuple[Tool, ...] = ()
    finish: str | None = None
    usage: tuple[int, int, int] | None = None  # prompt, completion, total
    usage_extra: dict[str, Any] = field(default_factory=dict)  # "a.b" paths into usage.extra
    done: bool = True  # "[DONE]" seen by a strict parser
    bad_events: int = 0
    other_choices: dict[int, tuple[str, str]] = field(default_factory=dict)  # content, finish
    retry: int | None = None
    raw_events: tuple[tuple[str, str], ...] = ()  # (event type, data) for SSE-level fixtures
    reads: str | None = None  # companion file listing the network reads
    status: int | None = None  # error bodies
    message: str | None = None
    retryable: bool | None = None
    error_type: str | None = None


_SF = "San Francisco"
# Full-width punctuation is the provider's real output, not a typo.
_ZH_ANSWER = "我是你的智能助手，能聊天、解答问题、处理文档、提供创意，随时帮你解决各种需求！😊"  # noqa: RUF001
EXPECTED: dict[str, Expect] = {
    "SOURCES.md": Expect("doc"),
    "01_openai_gpt4o_content_stop_usage.sse": Expect(
        "stream",
        events=34,
        content=(
            "I'm unable to provide real-time weather updates. To get the current weather in San "
            "Francisco, I recommend checking a reliable weather website or a weather app."
        ),
        finish="stop",
        usage=(14, 30, 44),
        usage_extra={"completion_tokens_details.reasoning_tokens": 0},
    ),
    "02_openai_finish_length.sse": Expect(
        "stream", content='{"', finish="length", usage=(79, 1, 80)
    ),
    "03_openai_tool_call_arguments_split.sse": Expect(
        "stream",
        content="",
        tools=(
            (
                "call_c91SqDXlYFuETYv8mUHzz6pp",
                "GetWeatherArgs",
                '{"city":"Edinburgh","country":"UK","units":"c"}',
            ),
        ),
        finish="tool_calls",
        usage=(76, 24, 100),
    ),
    "04_openai_parallel_tool_calls.sse": Expect(
        "stream",
        content="",
        tools=(
            (
                "call_JMW1whyEaYG438VE1OIflxA2",
                "GetWeatherArgs",
                '{"city": "Edinburgh", "country": "GB", "units": "c"}',
            ),
            (
                "call_DNYTawLBoN8fj3KN6qU9N1Ou",
                "get_stock_price",
                '{"ticker": "AAPL", "exchange": "NASDAQ"}',
            ),
        ),
        finish="tool_calls",
        usage=(149, 60, 209),
    ),
    "05_openai_n3_interleaved_choices.sse": Expect(
        "stream",
        content=f'{{"city":"{_SF}","temperature":65,"units":"f"}}',
        finish="stop",
        usage=(79, 42, 121),
        other_choices={
            1: (f'{{"city":"{_SF}","temperature":61,"units":"f"}}', "stop"),
            2: (f'{{"city":"{_SF}","temperature":59,"units":"f"}}', "stop"),
        },
    ),
    "06_openai_refusal_deltas.sse": Expect(
        "stream",
        content="",
        refusal="I'm sorry, I can't assist with that request.",
        finish="stop",
        usage=(79, 11, 90),
    ),
    "07_deepseek_reasoner_stream.sse": Expect(
        "stream",
        content="Hello! 😊 It's wonderful to meet you!",
        reasoning=(
            'Hmm, the user just said "Hello!" with an exclamation mark, which suggests a friendly '
            "and enthusiastic tone. This is a simple greeting, so no complex analysis is needed. "
            "\n\nThe best response would be to mirror their energy with an equally warm and "
            "welcoming reply."
        ),
        finish="stop",
        usage=(6, 169, 175),
        usage_extra={
            "completion_tokens_details.reasoning_tokens": 117,
            "prompt_cache_hit_tokens": 1,
            "prompt_cache_miss_tokens": 5,
        },
    ),
    "08_deepseek_chat_tool_call_stream.sse": Expect(
        "stream",
        content="I'll check the current weather in Tokyo for you.",
        tools=(("call_00_Sq0n5HVeFHkS1mBrIGbwBQcK", "get_weather", '{"location": "Tokyo"}'),),
        finish="tool_calls",
        usage=(161, 25, 186),
        usage_extra={"prompt_cache_hit_tokens": 128, "prompt_cache_miss_tokens": 33},
    ),
    # Elided source: the 帮 and 。 chunks merge into one unparseable event (two JSON objects).
    "09_deepseek_chat_parallel_tool_calls_elided.sse": Expect(
        "stream",
        content_prefix="我可以",
        tools=(
            (
                "call_00_JQSxFX1xOHGH6ajdpN88RMXO",
                "get_current_weather",
                '{"location": "北京", "format": "celsius"}',
            ),
            (
                "call_01_L8UtYbkfaMFr7hzsToGPWGfI",
                "get_current_weather",
                '{"location": "洛阳", "format": "celsius"}',
            ),
        ),
        finish="tool_calls",
        usage=(491, 129, 620),
        usage_extra={"prompt_cache_hit_tokens": 448},
        bad_events=1,
    ),
    "10_deepseek_chat_plain_stream.sse": Expect(
        "stream", content="Hello! How can I assist you today? 😊", finish="stop", usage=(12, 11, 23)
    ),
    "11_siliconflow_deepseek_r1_usage_every_chunk_elided.sse": Expect(
        "stream",
        content="\nHello! How can I assist you today? 😊",
        reasoning="We. We can simply respond with a greeting.\n",
        finish="stop",
        usage=(294, 51, 345),
        usage_extra={"completion_tokens_details.reasoning_tokens": 38},
    ),
    "13_deepseek_chat_via_proxy_retry0.sse": Expect(
        "stream",
        events=27,
        content=_ZH_ANSWER,
        finish="stop",
        usage=(77, 25, 102),
        retry=0,
        reads="13_deepseek_chat_via_proxy_retry0.reads.json",
    ),
    "13_deepseek_chat_via_proxy_retry0.reads.json": Expect("reads"),
    # Fixture artifact: the body ends with "data: [DONE]" and no terminator, discarded at EOF.
    "14_vllm_continuous_usage_stats.sse": Expect(
        "stream",
        content=(
            "Hello Sam. It's nice to meet you. Is there something I can help you with or would "
            "you like to chat?"
        ),
        finish="stop",
        usage=(46, 26, 72),
        done=False,
    ),
    "15_sdk_fixture_event_multiline_data.sse": Expect(
        "events", raw_events=(("ping", '{\n"foo":\n\n\ntrue}'),)
    ),
    "16_sdk_fixture_u2028_inside_json.sse": Expect(
        "events",
        raw_events=(
            ("message", '{"content":" culpa"}'),
            ("message", '{"content":" \u2028"}'),
            ("message", '{"content":"foo"}'),
        ),
    ),
    "21_hunyuan_tool_call_repeated_id_empty_name.sse": Expect(
        "stream",
        content_prefix="我们将使用get_current_weather工具",
        tools=(
            (
                "call_d4nekv42c3mas4ig9k30",
                "get_current_weather",
                '{"format":"celsius","location":"北京"}',
            ),
        ),
        finish="tool_calls",
        usage=None,
    ),
    "22_openai_via_relay_parallel_tools_obfuscation.sse": Expect(
        "stream",
        content="",
        tools=(
            (
                "call_8wSWhuzOhClEzH8c2pYjRIiz",
                "get_current_weather",
                '{"format": "celsius", "location": "北京"}',
            ),
            (
                "call_RbImHA6tBOwuzwIAvsQKFOox",
                "get_history_weather",
                '{"format": "celsius", "location": "洛阳"}',
            ),
        ),
        finish="tool_calls",
        usage=(172, 57, 229),
    ),
    "23_deepseek_reasoner_nonstream.json": Expect(
        "completion",
        content="Hello! How can I help you today?",
        reasoning_prefix=(
            'Hmm, the user just said "Hello!" with an exclamation mark, so they seem cheerful and '
            "friendly."
        ),
        finish="stop",
        usage=(12, 9, 21),
    ),
    "27_deepseek_400_model_not_exist.json": Expect(
        "error",
        status=400,
        message="Model Not Exist",
        retryable=False,
        error_type="invalid_request_error",
    ),
}


def names(*kinds: Kind) -> list[str]:
    return sorted(n for n, e in EXPECTED.items() if e.kind in kinds)


def corpus_dir() -> Path:
    # Called inside each test (not a fixture) so a missing folder is reported as FAILED.
    path = Path(os.environ.get(CORPUS_ENV) or DEFAULT_CORPUS)
    if not path.is_dir():
        pytest.fail(f"SSE corpus not found at {path} (set {CORPUS_ENV} to its folder)")
    return path


# --- feeding ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    events: list[SSEEvent]
    deltas: list[Delta]
    choices: dict[int, ChoiceResult]
    usage: Usage | None
    done: bool
    finished: bool
    bad_events: int
    model: str | None
    retry: int | None


def run(chunks: list[bytes], fast: bool = True) -> Outcome:
    decoder = SSEDecoder(fast=fast)
    events = [e for c in chunks for e in decoder.feed(c)]
    events += decoder.close()
    asm = StreamAssembler()
    deltas = [d for e in events for d in asm.add_event(e)]
    return Outcome(
        events,
        deltas,
        asm.choices,
        asm.usage,
        asm.done,
        asm.finished,
        asm.bad_events,
        asm.model,
        decoder.retry,
    )


def random_chunks(body: bytes, rng: random.Random) -> list[bytes]:
    chunks, i = [], 0
    while i < len(body):
        size = rng.randint(1, 16)
        chunks.append(body[i : i + size])
        i += size
    return chunks


def all_feedings(corpus: Path, name: str) -> dict[str, list[bytes]]:
    body = (corpus / name).read_bytes()
    feedings = {
        "whole": [body],
        "random": random_chunks(body, random.Random(f"{SEED}:{name}")),
        "bytewise": [body[i : i + 1] for i in range(len(body))],
    }
    reads_file = EXPECTED[name].reads
    if reads_file is not None:
        reads = json.loads((corpus / reads_file).read_text(encoding="utf-8"))
        feedings["reads"] = [r.encode() for r in reads]
    return feedings


def outcome_of(corpus: Path, name: str, fast: bool = True) -> Outcome:
    """Run every feeding, check they agree, return the (common) outcome."""
    outcomes = {how: run(chunks, fast) for how, chunks in all_feedings(corpus, name).items()}
    whole = outcomes.pop("whole")
    for how, other in outcomes.items():
        assert other == whole, f"{name}: feeding {how} differs from feeding the body whole"
    return whole


# --- checks -------------------------------------------------------------------------------------
def usage_path(extra: dict[str, Any], path: str) -> Any:
    value: Any = extra
    for key in path.split("."):
        value = value[key]
    return value


def check_choice(exp: Expect, got: ChoiceResult) -> None:
    if exp.content is not None:
        assert got.content == exp.content
    if exp.content_prefix is not None:
        assert got.content.startswith(exp.content_prefix), got.content
    if exp.reasoning_prefix is not None:
        assert got.reasoning.startswith(exp.reasoning_prefix), got.reasoning
    else:
        assert got.reasoning == exp.reasoning
    assert got.refusal == exp.refusal
    assert [(t.id, t.name, t.arguments) for t in got.tool_calls] == list(exp.tools)
    assert all(t.type == "function" for t in got.tool_calls)
    for tool in got.tool_calls:
        orjson.loads(tool.arguments)  # complete calls carry valid JSON arguments
    assert got.finish_reason == exp.finish


def check_usage(exp: Expect, got: Usage | None) -> None:
    if exp.usage is None:
        assert got is None
        return
    assert got is not None
    assert (got.prompt_tokens, got.completion_tokens, got.total_tokens) == exp.usage
    for path, value in exp.usage_extra.items():
        assert usage_path(got.extra, path) == value, path


# --- tests ----------------------------------------------------------------------------------------
def test_corpus_folder_exists() -> None:
    corpus = corpus_dir()
    assert any(corpus.iterdir())


def test_every_corpus_file_has_expectations() -> None:
    corpus = corpus_dir()
    on_disk = {p.name for p in corpus.iterdir() if p.is_file()}
    assert sorted(on_disk - EXPECTED.keys()) == [], "corpus files without an EXPECTED entry"
    assert sorted(EXPECTED.keys() - on_disk) == [], "EXPECTED entries without a corpus file"


def test_sources_documents_every_file() -> None:
    corpus = corpus_dir()
    sources = (corpus / "SOURCES.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        if name != "SOURCES.md":
            assert name in sources, name


DECODERS = pytest.mark.parametrize("fast", [True, False], ids=["fast", "strict"])


@DECODERS
@pytest.mark.parametrize("name", names("stream"))
def test_stream_file(name: str, fast: bool) -> None:
    corpus = corpus_dir()
    exp = EXPECTED[name]
    out = outcome_of(corpus, name, fast)
    if exp.events is not None:
        assert len(out.events) == exp.events
    choice0 = out.choices[0]
    check_choice(exp, choice0)
    check_usage(exp, out.usage)
    assert out.done is exp.done
    assert out.finished is (exp.finish is not None)
    assert out.bad_events == exp.bad_events
    assert out.retry == exp.retry
    assert all(e.retry == exp.retry for e in out.events)
    assert sorted(out.choices) == [0, *sorted(exp.other_choices)]
    for index, (content, finish) in exp.other_choices.items():
        assert (out.choices[index].content, out.choices[index].finish_reason) == (content, finish)
    # The live deltas are exactly the pieces of choice 0's final text.
    for kind in ("content", "reasoning", "refusal"):
        assert "".join(d.text for d in out.deltas if d.kind == kind) == getattr(choice0, kind)
    assert all(d.text for d in out.deltas)


@DECODERS
@pytest.mark.parametrize("name", names("events"))
def test_sse_level_fixture(name: str, fast: bool) -> None:
    corpus = corpus_dir()
    out = outcome_of(corpus, name, fast)
    assert [(e.event, e.data) for e in out.events] == list(EXPECTED[name].raw_events)
    for event in out.events:
        orjson.loads(event.data)
    assert out.choices == {} and out.bad_events == 0


@DECODERS
def test_15_multiline_data_is_one_json_value(fast: bool) -> None:
    corpus = corpus_dir()
    (event,) = outcome_of(corpus, "15_sdk_fixture_event_multiline_data.sse", fast).events
    assert orjson.loads(event.data) == {"foo": True}


@pytest.mark.parametrize("name", names("stream") + names("events"))
def test_fast_path_gives_what_the_strict_decoder_gives(name: str) -> None:
    corpus = corpus_dir()
    for how, chunks in all_feedings(corpus, name).items():
        assert run(chunks, fast=True) == run(chunks, fast=False), f"{name}, fed {how}"


@pytest.mark.parametrize("name", names("reads"))
def test_reads_file_is_the_stream_body(name: str) -> None:
    corpus = corpus_dir()
    (stream,) = [n for n, e in EXPECTED.items() if e.reads == name]
    reads = json.loads((corpus / name).read_text(encoding="utf-8"))
    assert "".join(reads).encode() == (corpus / stream).read_bytes()
    # What SOURCES.md says about the capture: 43 reads, 13 of them exactly "data:".
    assert len(reads) == 43
    assert sum(r == "data:" for r in reads) == 13
    assert sum(r.startswith("\nretry:0") for r in reads) == 6


@pytest.mark.parametrize("name", names("completion"))
def test_completion_file(name: str) -> None:
    corpus = corpus_dir()
    exp = EXPECTED[name]
    body = (corpus / name).read_bytes()
    choices, usage = assemble_completion(body)
    assert sorted(choices) == [0]
    check_choice(exp, choices[0])
    check_usage(exp, usage)
    # DeepSeek keep-alive: blank lines before a non-streaming body change nothing.
    assert assemble_completion(b"\n\n\n" + body) == (choices, usage)


@pytest.mark.parametrize("name", names("error"))
def test_error_file(name: str) -> None:
    corpus = corpus_dir()
    exp = EXPECTED[name]
    assert exp.status is not None
    err = parse_error_body(exp.status, (corpus / name).read_bytes())
    assert (err.status, err.message, err.retryable, err.type) == (
        exp.status,
        exp.message,
        exp.retryable,
        exp.error_type,
    )


def assembled(chunks: list[bytes], via_data: bool) -> tuple[Any, ...]:
    """What the assembler makes of a body: from the decoder's events, or the way the provider
    call reads it (plain events as raw data bytes, ``add_data``). An error is part of it."""
    decoder, asm = SSEDecoder(), StreamAssembler()
    deltas: list[Delta] = []
    error = None
    try:
        for c in chunks:
            if via_data:
                for item in decoder.feed_data(c):
                    deltas += (asm.add_data(item) if isinstance(item, bytes)
                               else asm.add_event(item))
            else:
                for event in decoder.feed(c):
                    deltas += asm.add_event(event)
    except ProviderError as exc:
        error = repr(exc)
    return (deltas, asm.choices, asm.usage, asm.done, asm.finished, asm.bad_events, asm.model,
            asm.chunks, error)


ODD_DATA = [b"data: [DONE]\n\n", b"data:  [DONE] \n\n", b"data: " + ("\u3000" * 4).encode()
            + b"[DONE]\n\n", b'data: {"choices": [{"index": 0, "delta": {"content": "\xff'
            b'x"}}]}\n\n', b"data: [1, 2, 3, 4, 5, 6, 7, 8]\n\n",
            b'data: {"error": {"message": "overloaded", "code": 529}}\n\n',
            b'data: {"object": "chat.completion.chunk"}{"x": 1}\n\n']


@pytest.mark.parametrize("name", names("stream") + names("events"))
def test_the_provider_s_read_of_raw_data_gives_what_events_give(name: str) -> None:
    corpus = corpus_dir()
    for how, chunks in all_feedings(corpus, name).items():
        assert assembled(chunks, True) == assembled(chunks, False), f"{name}, fed {how}"


@pytest.mark.parametrize("body", ODD_DATA, ids=range(len(ODD_DATA)))
def test_odd_data_read_raw_gives_what_events_give(body: bytes) -> None:
    assert assembled([body], True) == assembled([body], False)


def test_plain_events_come_as_their_data_bytes() -> None:
    got = SSEDecoder().feed_data(b'data: {"a": 1}\n\ndata:[DONE]\n\n')
    assert got == [b'{"a": 1}', b"[DONE]"]
    (event,) = SSEDecoder().feed_data(b"event: error\ndata: x\n\n")  # not plain: an event
    assert isinstance(event, SSEEvent) and event.event == "error"
