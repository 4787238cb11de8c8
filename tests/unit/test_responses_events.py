"""A response's stream events built from its task's events: OpenAI's names and order, numbers
from 0 without gaps, the same events for the same task events, and every one parsed by the
official SDK: validated by its pydantic models and accumulated by its stream helper
(``ResponseStreamState``, what ``client.responses.stream()`` runs)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import ParsedResponse, Response, ResponseStreamEvent
from pydantic import TypeAdapter

from services.edge.openai.responses import protocol
from services.edge.openai.responses.events import ResponseEvents, ToolCallDelta, encode
from services.edge.openai.responses.protocol import Echo
from services.edge.openai.responses.translate import ToolNames, output_items, translate_request

ADAPTER: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
RID = protocol.response_id("tsk_" + "fe" * 16)
COMPLETED_AT = "2026-05-01T10:00:00.000Z"

Step = tuple[str, dict[str, Any]] | ToolCallDelta
QUEUED: Step = ("status", {"status": "queued"})
RUNNING: Step = ("status", {"status": "running"})
RESET: Step = ("reset", {"attempt": 2})


def R(text: str) -> Step:
    return ("reasoning", {"delta": text})


def C(text: str) -> Step:
    return ("content", {"delta": text})


def F(text: str) -> Step:
    return ("refusal", {"delta": text})


def DONE(**result: Any) -> Step:
    result.setdefault("finish_reason", "stop")
    return ("done", {"id": "tsk_x", "status": "succeeded", "result": result,
                     "completed_at": COMPLETED_AT})


def ERROR(error: dict[str, Any]) -> Step:
    return ("error", {"status": "failed", "result": None, "error": error,
                      "completed_at": COMPLETED_AT})


CANCELLED: Step = ("cancelled", {"status": "cancelled", "error": {"code": "cancelled"},
                                 "completed_at": COMPLETED_AT})


def machine(names: ToolNames | None = None, echo: Echo | None = None) -> ResponseEvents:
    return ResponseEvents(RID, echo or Echo(), model="m", created_at=100, names=names)


def feed(events: ResponseEvents, steps: list[Step]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for step in steps:
        out += events.tool_call(step) if isinstance(step, ToolCallDelta) else events.feed(*step)
    return out


def run(steps: list[Step], names: ToolNames | None = None,
        tools: Any = omit) -> tuple[list[dict[str, Any]], ResponseStreamState[Any]]:
    """The events, each validated by the SDK, then accumulated by its stream helper."""
    out = feed(machine(names), steps)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=tools, text_format=omit)
    for event in out:
        parsed = ADAPTER.validate_python(orjson.loads(orjson.dumps(event)))
        state.handle_event(parsed)
    return out, state


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def final(events: list[dict[str, Any]]) -> dict[str, Any]:
    response: dict[str, Any] = events[-1]["response"]
    Response.model_validate(response)
    return response


def deltas(events: list[dict[str, Any]], kind: str) -> str:
    return "".join(e["delta"] for e in events if e["type"] == kind)


MESSAGE = ["response.output_item.added", "response.content_part.added"]
MESSAGE_END = ["response.output_text.done", "response.content_part.done",
               "response.output_item.done"]


# --- the order ----------------------------------------------------------------------------------

def test_a_plain_answer_in_openais_order() -> None:
    result = {"content": "Hello", "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                            "total_tokens": 5}}
    events, state = run([QUEUED, RUNNING, C("Hel"), C("lo"), DONE(**result)])
    assert types(events) == [
        "response.created", "response.in_progress", *MESSAGE,
        "response.output_text.delta", "response.output_text.delta", *MESSAGE_END,
        "response.completed"]
    assert events[0]["response"]["status"] == "queued"
    assert events[1]["response"]["status"] == "in_progress"
    done = final(events)
    assert done["status"] == "completed" and done["completed_at"] == 1777629600
    assert done["usage"]["output_tokens"] == 2 and done["usage"]["input_tokens"] == 3
    # What the stream ends with is what a retrieve builds from the stored result.
    assert done["output"] == output_items({**result, "finish_reason": "stop"}, RID, ToolNames())
    # The SDK's stream helper assembled the same answer from the deltas.
    sdk_final: ParsedResponse[Any] | None = state._completed_response
    assert sdk_final is not None and sdk_final.output_text == "Hello"


def test_an_r1_answer_is_a_reasoning_item_then_a_message() -> None:
    result = {"content": "4", "reasoning_content": "2+2 is 4",
              "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14,
                        "completion_tokens_details": {"reasoning_tokens": 6}}}
    events, _ = run([QUEUED, RUNNING, R("2+2"), R(" is 4"), C("4"), DONE(**result)])
    assert types(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        *MESSAGE, "response.output_text.delta", *MESSAGE_END, "response.completed"]
    reasoning_done = next(e for e in events if e["type"] == "response.reasoning_text.done")
    assert reasoning_done["text"] == "2+2 is 4" and reasoning_done["output_index"] == 0
    done = final(events)
    assert done["output"] == output_items({**result, "finish_reason": "stop"}, RID, ToolNames())
    assert done["usage"]["output_tokens_details"] == {"reasoning_tokens": 6}


def test_an_answer_cut_by_its_length_is_incomplete() -> None:
    result = {"content": "abc", "finish_reason": "length"}
    events, _ = run([QUEUED, RUNNING, C("abc"), DONE(**result)])
    assert events[-1]["type"] == "response.incomplete"
    done = final(events)
    assert done["status"] == "incomplete"
    assert done["incomplete_details"] == {"reason": "max_output_tokens"}
    assert done["output"] == output_items(result, RID, ToolNames(), incomplete=True)
    assert done["output"][-1]["status"] == "incomplete"


def test_a_failed_task_fails_the_response_and_closes_what_was_open() -> None:
    events, _ = run([QUEUED, RUNNING, C("par"), ERROR({"code": "http_500", "status": 500,
                                                       "message": "provider down"})])
    assert types(events)[-4:] == [*MESSAGE_END, "response.failed"]
    done = final(events)
    assert done["status"] == "failed"
    assert done["error"] == {"code": "server_error", "message": "provider down",
                             "type": "http_500", "param": None}
    assert done["output"][0]["status"] == "incomplete"


def test_a_task_cancelled_while_queued() -> None:
    events, _ = run([QUEUED, CANCELLED])
    assert types(events) == ["response.created", "response.failed"]
    assert final(events)["status"] == "cancelled" and final(events)["error"] is None


def test_an_empty_answer_is_one_empty_message() -> None:
    events, _ = run([QUEUED, RUNNING, DONE(content="")])
    assert types(events) == ["response.created", "response.in_progress", *MESSAGE,
                             *MESSAGE_END, "response.completed"]
    assert final(events)["output"] == output_items({"content": ""}, RID, ToolNames())


def test_a_refusal_streams_as_refusal_events() -> None:
    events, _ = run([QUEUED, RUNNING, F("I can"), F("not."),
                         DONE(content="", refusal="I cannot.")])
    assert types(events)[2:] == [
        *MESSAGE, "response.refusal.delta", "response.refusal.delta",
        "response.refusal.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert final(events)["output"][0]["content"] == [{"type": "refusal",
                                                      "refusal": "I cannot."}]


def test_events_of_no_meaning_here_make_nothing() -> None:
    events = feed(machine(), [QUEUED, ("status", {"status": "batched"}),
                              ("something_new", {"x": 1})])
    assert types(events) == ["response.created"]


def test_a_status_back_to_queued_after_a_retry_changes_nothing() -> None:
    events = feed(machine(), [QUEUED, RUNNING, ("status", {"status": "queued", "retried": True}),
                              RUNNING])
    assert types(events) == ["response.created", "response.in_progress"]


def test_snapshots_do_not_grow_with_later_deltas() -> None:
    events, _ = run([QUEUED, RUNNING, C("a"), C("b"), DONE(content="ab")])
    added = next(e for e in events if e["type"] == "response.output_item.added")
    part = next(e for e in events if e["type"] == "response.content_part.added")
    assert added["item"]["content"] == [] and added["item"]["status"] == "in_progress"
    assert part["part"]["text"] == ""
    assert events[0]["response"]["output"] == []


# --- retries and resumption ---------------------------------------------------------------------

def test_a_retry_that_repeats_the_text_sends_nothing_twice() -> None:
    plain, _ = run([QUEUED, RUNNING, R("think"), C("Hello wor"), C("ld"),
                    DONE(content="Hello world", reasoning_content="think")])
    retried, _ = run([QUEUED, RUNNING, R("think"), C("Hello wor"), RESET, R("thi"), R("nk"),
                      C("Hello"), C(" world"),
                      DONE(content="Hello world", reasoning_content="think")])
    assert deltas(retried, "response.output_text.delta") == "Hello world"
    assert deltas(retried, "response.reasoning_text.delta") == "think"
    assert final(retried)["output"] == final(plain)["output"]


def test_a_retry_that_says_something_else_ends_the_stream_with_an_error() -> None:
    events_ = machine()
    events = feed(events_, [QUEUED, RUNNING, C("Hello wor"), RESET, C("Goodbye")])
    assert events[-1]["type"] == "error" and events[-1]["code"] == "retry_diverged"
    assert RID in events[-1]["message"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        ADAPTER.validate_python(event)
    assert feed(events_, [C("more"), DONE(content="Goodbye")]) == []  # nothing after it


def test_a_retry_that_ends_short_of_the_sent_text_ends_with_an_error() -> None:
    events = feed(machine(), [QUEUED, RUNNING, C("Hello world"), RESET, C("Hello"),
                              DONE(content="Hello")])
    assert types(events)[-1] == "error"


def test_an_end_that_carries_more_than_the_deltas_sends_the_rest_first() -> None:
    """A client that resumes after Redis forgot the task's events gets its end alone."""
    result = {"content": "Hello world", "reasoning_content": "hm"}
    alone, _ = run([DONE(**result)])
    assert types(alone) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.content_part.done", "response.output_item.done",
        *MESSAGE, "response.output_text.delta", *MESSAGE_END, "response.completed"]
    assert final(alone)["output"] == output_items({**result, "finish_reason": "stop"}, RID,
                                                  ToolNames())
    partly, _ = run([QUEUED, RUNNING, R("hm"), C("Hello"), DONE(**result)])
    assert deltas(partly, "response.output_text.delta") == "Hello world"
    assert final(partly)["output"] == final(alone)["output"]


def test_an_end_that_contradicts_the_deltas_ends_with_an_error() -> None:
    events = feed(machine(), [QUEUED, RUNNING, C("Hello"), DONE(content="Goodbye")])
    assert types(events)[-1] == "error"


STEPS: list[Step] = [QUEUED, RUNNING, R("a"), R("b"), C("c"), RESET, R("ab"), C("cd"),
                     C("e"), DONE(content="cde", reasoning_content="ab",
                                  usage={"prompt_tokens": 1, "completion_tokens": 2})]


def test_the_same_task_events_always_give_the_same_events() -> None:
    first, second = feed(machine(), STEPS), feed(machine(), STEPS)
    assert first == second
    # Fed one at a time or replayed whole, a machine numbers them alike: a resumed stream
    # (starting_after=N) is the suffix after N.
    for n in range(len(first)):
        replayed = [e for e in feed(machine(), STEPS) if e["sequence_number"] > n]
        assert replayed == first[n + 1:]


@pytest.mark.parametrize("cut", range(1, 11))
def test_every_chunking_of_the_text_gives_the_whole_text(cut: int) -> None:
    text = "Hello, world"
    pieces = [C(text[i:i + cut]) for i in range(0, len(text), cut)]
    events, state = run([QUEUED, RUNNING, *pieces, DONE(content=text)])
    assert deltas(events, "response.output_text.delta") == text
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["text"] == text
    assert state._completed_response is not None
    assert state._completed_response.output_text == text


def test_interleaved_thinking_after_the_answer_began_opens_a_new_reasoning_item() -> None:
    events, _ = run([QUEUED, RUNNING, R("a"), C("b"), R("c"), C("d"),
                     DONE(content="bd", reasoning_content="ac")])
    kinds = [i["type"] for i in final(events)["output"]]
    assert kinds == ["reasoning", "message", "reasoning", "message"]
    assert [i["id"] for i in final(events)["output"]] == [
        protocol.item_id(k, RID, n) for n, k in enumerate(kinds)]


# --- tool calls ---------------------------------------------------------------------------------

NAMESPACE = {"type": "namespace", "name": "crm", "description": "CRM",
             "tools": [{"type": "function", "name": "find", "strict": True,
                        "parameters": {"type": "object", "additionalProperties": False,
                                       "properties": {"q": {"type": "string"}},
                                       "required": ["q"]}}]}
WEATHER = {"type": "function", "name": "weather", "strict": True,
           "parameters": {"type": "object", "additionalProperties": False,
                          "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_streamed_tool_calls_become_function_call_items_the_sdk_parses() -> None:
    t = translate_request({"input": "x", "tools": [WEATHER, NAMESPACE]})
    calls = [{"index": 0, "id": "call_a", "type": "function",
              "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
             {"index": 1, "id": "call_b", "type": "function",
              "function": {"name": "crm__find", "arguments": "{\"q\":\"acme\"}"}}]
    steps: list[Step] = [
        QUEUED, RUNNING, R("need tools"),
        ToolCallDelta(0, "call_a", "weather", ""), ToolCallDelta(0, arguments="{\"city\":"),
        ToolCallDelta(0, arguments="\"Paris\"}"),
        ToolCallDelta(1, "call_b", "crm__find", "{\"q\":\"acme\"}"),
        DONE(content=None, reasoning_content="need tools", finish_reason="tool_calls",
             tool_calls=calls)]
    events, state = run(steps, t.tool_names, tools=[WEATHER, NAMESPACE])
    # Calls stay open until the answer ends (a provider may interleave parallel calls).
    assert types(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    done = final(events)
    assert done["output"] == output_items(
        {"reasoning_content": "need tools", "tool_calls": calls}, RID, t.tool_names)
    assert done["output"][2] == {
        "id": f"fc_{RID[5:]}_2", "type": "function_call", "call_id": "call_b", "name": "find",
        "namespace": "crm", "arguments": "{\"q\":\"acme\"}", "status": "completed"}
    assert deltas(events, "response.function_call_arguments.delta") == (
        "{\"city\":\"Paris\"}{\"q\":\"acme\"}")
    # The SDK finds each call's tool (the namespaced one in its namespace) and parses it.
    sdk_final = state._completed_response
    assert sdk_final is not None
    parsed = [getattr(item, "parsed_arguments", None) for item in sdk_final.output]
    assert parsed == [None, {"city": "Paris"}, {"q": "acme"}]


def test_tool_call_pieces_in_order() -> None:
    events, _ = run([QUEUED, RUNNING, ToolCallDelta(0, "c", "weather", "{"),
                     ToolCallDelta(0, arguments="}"),
                     DONE(content=None, finish_reason="tool_calls", tool_calls=[
                         {"id": "c", "function": {"name": "weather", "arguments": "{}"}}])])
    assert types(events) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert args_done["arguments"] == "{}" and args_done["name"] == "weather"


def test_tool_calls_known_only_from_the_end() -> None:
    calls = [{"id": "c", "function": {"name": "weather", "arguments": "{}"}}]
    events, _ = run([QUEUED, RUNNING, DONE(content=None, finish_reason="tool_calls",
                                           tool_calls=calls)])
    assert final(events)["output"] == output_items({"tool_calls": calls}, RID, ToolNames())


def test_more_of_a_call_the_client_was_told_was_whole_ends_with_an_error() -> None:
    events = feed(machine(), [QUEUED, RUNNING, ToolCallDelta(0, "c", "f", "{"), C("text"),
                              RESET, ToolCallDelta(0, "c", "f", "{}")])
    assert types(events)[-1] == "error"


def test_a_retried_tool_call_is_not_sent_twice() -> None:
    events, _ = run([QUEUED, RUNNING, ToolCallDelta(0, "c", "f", "{\"a\""), RESET,
                     ToolCallDelta(0, "c", "f", "{\"a\":1}"),
                     DONE(content=None, tool_calls=[
                         {"id": "c", "function": {"name": "f", "arguments": "{\"a\":1}"}}])])
    assert deltas(events, "response.function_call_arguments.delta") == "{\"a\":1}"


# --- errors and wire format ---------------------------------------------------------------------

def test_a_stream_that_cannot_go_on_ends_with_an_error_event() -> None:
    events_ = machine()
    events = feed(events_, [QUEUED]) + events_.abort("unavailable", "the edge stopped")
    assert types(events) == ["response.created", "error"]
    assert events[-1] == {"type": "error", "sequence_number": 1, "code": "unavailable",
                          "message": "the edge stopped", "param": None}
    ADAPTER.validate_python(events[-1])
    assert events_.abort("x", "y") == [] and events_.feed(*C("z")) == []


def test_an_event_goes_out_as_server_sent_events() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 4, "delta": "a\nb"}
    assert encode(event) == (b"event: response.output_text.delta\n"
                             b'data: {"type":"response.output_text.delta","sequence_number":4,'
                             b'"delta":"a\\nb"}\n\n')


def test_the_sdk_adapter_really_validates() -> None:
    """The checks above can fail: an event missing a required field is refused."""
    events, _ = run([QUEUED, RUNNING, C("a"), DONE(content="a")])
    delta = dict(next(e for e in events if e["type"] == "response.output_text.delta"))
    del delta["logprobs"]
    with pytest.raises(ValueError):
        ADAPTER.validate_python(delta)
