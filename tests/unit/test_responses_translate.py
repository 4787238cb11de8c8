"""Responses API requests as Chat Completions requests, and Chat Completions answers as
Responses output items: every shape the official SDK defines for what Sluice answers is
checked against the SDK's own models (``openai.types.responses``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.responses import Response

from services.edge.openai.responses import protocol
from services.edge.openai.responses.protocol import Echo
from services.edge.openai.responses.translate import (
    NAME_MAX,
    REFUSE,
    Translated,
    mangle,
    output_items,
    responses_param,
    translate_request,
)
from services.edge.plumbing.errors import ApiError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "client-requests"
CODEX = FIXTURES / "codex-0.169.0-responses-request.json"
RID = protocol.response_id("tsk_" + "0123456789abcdef" * 2)


def translate(body: dict[str, Any], **kw: Any) -> Translated:
    return translate_request(body, **kw)


def refused(body: Any, **kw: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        translate_request(body, **kw)
    err = caught.value
    assert err.status == 400, err.message
    assert err.param is None or err.message.startswith(err.param + ":"), err.message
    return err


def valid_response(obj: dict[str, Any]) -> Response:
    """The SDK's model, validated (not constructed): a field of the wrong shape fails."""
    return Response.model_validate(orjson.loads(orjson.dumps(obj)))


# --- ids ----------------------------------------------------------------------------------------

def test_a_response_id_names_its_task_and_back() -> None:
    task = "tsk_" + "ab" * 16
    rid = protocol.response_id(task)
    assert rid == "resp_" + "ab" * 16
    assert protocol.task_id_of(rid) == task


@pytest.mark.parametrize("bad", ["tsk_" + "ab" * 16, "resp_", "resp_" + "AB" * 16,
                                 "resp_" + "ab" * 16 + "/x", "resp_../x", ""])
def test_what_is_not_one_of_our_response_ids_names_no_task(bad: str) -> None:
    assert protocol.task_id_of(bad) is None


# --- input --------------------------------------------------------------------------------------

def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    t = translate({"model": "m", "input": "Hi", "instructions": "Be brief."})
    assert t.chat["messages"] == [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hi"}]
    assert t.origins == ["instructions", "input[0]"]
    assert t.input_items == [{"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": "Hi"}]}]
    assert t.chat["model"] == "m"
    assert (t.stream, t.background, t.store) == (False, False, True)


def test_text_parts_become_one_string_and_developer_becomes_system() -> None:
    t = translate({"input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "a"},
                                          {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "user", "content": "q"}]})
    assert t.chat["messages"] == [{"role": "system", "content": "a\nb"},
                                  {"role": "user", "content": "q"}]


def test_images_and_files_become_chat_completions_parts() -> None:
    t = translate({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
        {"type": "input_file", "file_data": "data:application/pdf;base64,BBBB",
         "filename": "a.pdf"}]}]})
    assert t.chat["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                            "detail": "low"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,BBBB",
                                  "filename": "a.pdf"}}]


@pytest.mark.parametrize(("part", "param"), [
    ({"type": "input_image", "file_id": "file-1"}, "input[0].content[0].image_url"),
    ({"type": "input_file", "file_id": "file-1"}, "input[0].content[0].file_data"),
    ({"type": "input_file", "file_url": "https://x/a.pdf"}, "input[0].content[0].file_data"),
    ({"type": "input_audio"}, "input[0].content[0].type"),
    ({"type": "input_text"}, "input[0].content[0].text"),
    ("text", "input[0].content[0]"),
])
def test_a_part_that_cannot_be_served_is_refused_by_name(part: Any, param: str) -> None:
    assert refused({"input": [{"role": "user", "content": [part]}]}).param == param


def test_a_tool_round_trip_becomes_an_assistant_turn_with_tool_calls_and_a_tool_message() -> None:
    t = translate({"input": [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "I should call it."}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather",
         "arguments": "{\"city\":\"Paris\"}"},
        {"type": "function_call", "call_id": "call_2", "name": "spawn_agent",
         "namespace": "multi_agent_v1", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "ok"}]},
    ]})
    assert t.chat["messages"][1:] == [
        {"role": "assistant", "content": "Let me check.",
         "reasoning_content": "I should call it.",
         "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
             {"id": "call_2", "type": "function",
              "function": {"name": "multi_agent_v1__spawn_agent", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "ok"}]
    assert t.origins == ["input[0]", "input[1]", "input[5]", "input[6]"]


def test_calls_after_a_finished_turn_start_a_new_one() -> None:
    t = translate({"input": [
        {"role": "user", "content": "q"},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": "1"},
        {"role": "assistant", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"type": "reasoning", "summary": [], "content": []},  # no text: nothing to replay
        {"type": "function_call", "call_id": "b", "name": "f", "arguments": "{}"}]})
    roles = [(m["role"], m.get("content"), len(m.get("tool_calls", []))) for m in
             t.chat["messages"]]
    assert roles == [("user", "q", 0), ("assistant", None, 1), ("tool", "1", 0),
                     ("assistant", "one", 0), ("assistant", "two", 0), ("assistant", None, 1)]


@pytest.mark.parametrize(("item", "param"), [
    ({"type": "item_reference", "id": "msg_1"}, "input[0].type"),
    ({"type": "web_search_call", "id": "ws_1"}, "input[0].type"),
    ({"role": "tool", "content": "x"}, "input[0].role"),
    ({"role": {}, "content": "x"}, "input[0].role"),  # was a 500
    ({"type": "function_call", "call_id": "c", "name": "f", "arguments": {}},
     "input[0].arguments"),
    ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[0].call_id"),
    ({"type": "function_call_output", "call_id": "c",
      "output": [{"type": "input_image", "image_url": "data:,"}]}, "input[0].output"),
    ({"type": "message", "role": "assistant", "content": [{"type": "input_image"}]},
     "input[0].content[0].type"),
])
def test_an_item_that_cannot_be_served_is_refused_by_name(item: dict[str, Any],
                                                          param: str) -> None:
    assert refused({"input": [item]}).param == param


@pytest.mark.parametrize(("body", "param"), [
    ({}, "input"),
    ({"input": ""}, "input"),
    ({"input": [], "instructions": "i"}, "input"),
    ({"input": 5}, "input"),
    ({"input": [3]}, "input[0]"),
    ({"input": "x", "stream": "yes"}, "stream"),
    ({"input": "x", "store": 1}, "store"),
    ({"input": "x", "instructions": 5}, "instructions"),
    ({"input": "x", "background": True, "store": False}, "background"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
    ({"input": "x", "temperature": "hot"}, "temperature"),
    ({"input": "x", "reasoning": {"effort": "maximal"}}, "reasoning.effort"),
    ({"input": "x", "reasoning": "high"}, "reasoning"),
    ({"input": "x", "reasoning": {"effort": {}}}, "reasoning.effort"),  # was a 500
    ({"input": "x", "text": {"format": {"type": {}}}}, "text.format.type"),
    ({"input": "x", "tool_choice": {"type": "allowed_tools", "mode": {}}}, "tool_choice.mode"),
    ({"input": "x", "service_tier": {}}, "service_tier"),
    ({"input": "x", "truncation": []}, "truncation"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}},
     "text.format.schema"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
     "text.format.name"),
    ({"input": "x", "service_tier": "fast"}, "service_tier"),
    ({"input": "x", "metadata": ["k"]}, "metadata"),
    ({"input": "x", "include": "x"}, "include"),
    ({"input": "x", "truncation": "sometimes"}, "truncation"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": "x", "messages": []}, "messages"),
    ({"input": "x", "max_tokens": 5}, "max_tokens"),
    ({"input": "x", "tool_choice": "any"}, "tool_choice"),
    ({"input": "x", "tools": {}}, "tools"),
    ({"input": "x", "tools": [{"name": "f"}]}, "tools[0].type"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "x", "tools": [{"type": "function", "name": "f" * 65}]}, "tools[0].name"),
    ({"input": "x", "previous_response_id": 7}, "previous_response_id"),
])
def test_each_bad_field_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    assert refused(body).param == param


def test_the_body_must_be_an_object() -> None:
    assert refused([1, 2]).param is None


# --- previous_response_id -----------------------------------------------------------------------

def test_earlier_turns_come_after_the_instructions_and_before_the_new_input() -> None:
    first = translate({"input": "What is 2+2?", "instructions": "old, not carried over"})
    earlier = [*first.input_items, *output_items(
        {"content": "4", "reasoning_content": "add", "finish_reason": "stop"}, RID,
        first.tool_names)]
    t = translate({"input": "And times 3?", "instructions": "Be brief.",
                   "previous_response_id": RID}, previous=earlier)
    assert t.chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "add"},
        {"role": "user", "content": "And times 3?"}]
    assert t.origins == ["instructions", "previous_response_id[0]", "previous_response_id[1]",
                         "input[0]"]
    assert t.input_items == [{"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": "And times 3?"}]}]
    assert t.previous_response_id == RID and t.echo.previous_response_id == RID


def test_with_earlier_turns_the_new_input_may_be_left_out() -> None:
    t = translate({"previous_response_id": RID},
                  previous=[{"type": "message", "role": "user", "content": "hi"}])
    assert t.chat["messages"] == [{"role": "user", "content": "hi"}]


def test_errors_found_in_the_chat_body_name_the_responses_field() -> None:
    t = translate({"input": [{"role": "user", "content": "a"},
                             {"role": "user", "content": "b"}], "instructions": "i"})
    assert responses_param("messages[2].content", t.origins) == "input[1].content"
    assert responses_param("messages[0].content", t.origins) == "instructions.content"
    assert responses_param("messages[9]", t.origins) == "input"
    assert responses_param("max_completion_tokens", t.origins) == "max_output_tokens"
    assert responses_param("temperature", t.origins) == "temperature"
    assert responses_param(None, t.origins) is None


# --- tools --------------------------------------------------------------------------------------

FN = {"type": "function", "name": "weather", "description": "d", "strict": True,
      "parameters": {"type": "object", "properties": {}}}


def test_function_tools_become_chat_completions_tools() -> None:
    t = translate({"input": "x", "tools": [FN], "tool_choice": "required",
                   "parallel_tool_calls": False})
    assert t.chat["tools"] == [{"type": "function", "function": {
        "name": "weather", "description": "d", "strict": True,
        "parameters": {"type": "object", "properties": {}}}}]
    assert t.chat["tool_choice"] == "required"
    assert t.chat["parallel_tool_calls"] is False
    assert t.omitted_tools == []


def test_a_namespace_offers_its_functions_under_names_that_come_back_split() -> None:
    ns = {"type": "namespace", "name": "crm", "description": "CRM tools",
          "tools": [{"type": "function", "name": "find", "parameters": {}},
                    {"type": "custom", "name": "free"}]}
    t = translate({"input": "x", "tools": [FN, ns]})
    assert [tool["function"]["name"] for tool in t.chat["tools"]] == ["weather", "crm__find"]
    assert t.tool_names.split("crm__find") == ("crm", "find")
    assert t.tool_names.split("weather") == (None, "weather")
    assert t.omitted_tools == ["crm.custom"]


def test_a_long_mangled_name_fits_chat_completions_and_stays_reversible() -> None:
    ns, name = "n" * 40, "f" * 40
    offered = mangle(ns, name)
    assert len(offered) == NAME_MAX and offered == mangle(ns, name)
    assert offered != mangle(ns, "f" * 39 + "g")
    t = translate({"input": "x", "tools": [{"type": "namespace", "name": ns, "description": "",
                                           "tools": [{"type": "function", "name": name}]}]})
    assert t.tool_names.split(offered) == (ns, name)


def test_the_same_function_offered_twice_is_the_clients_business() -> None:
    t = translate({"input": "x", "tools": [FN, FN]})
    assert [tool["function"]["name"] for tool in t.chat["tools"]] == ["weather", "weather"]


def test_two_functions_under_one_offered_name_are_refused() -> None:
    clash = {"type": "namespace", "name": "a", "description": "",
             "tools": [{"type": "function", "name": "b"}]}
    err = refused({"input": "x", "tools": [{"type": "function", "name": "a__b"}, clash]})
    assert err.param == "tools[1].tools[0].name"


def test_hosted_tools_are_left_out_and_listed_or_refused() -> None:
    hosted = [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": []},
              {"type": "code_interpreter", "container": {"type": "auto"}},
              {"type": "image_generation"}, {"type": "computer_use_preview"},
              {"type": "mcp", "server_label": "x"}]
    t = translate({"input": "x", "tools": [*hosted, FN], "tool_choice": {"type": "web_search"},
                   "parallel_tool_calls": True})
    assert t.omitted_tools == ["web_search", "file_search", "code_interpreter",
                               "image_generation", "computer_use_preview", "mcp"]
    assert [tool["function"]["name"] for tool in t.chat["tools"]] == ["weather"]
    assert "tool_choice" not in t.chat  # a left-out tool's choice: the provider picks
    assert t.echo.tools == [*hosted, FN]  # the response shows what was asked for
    err = refused({"input": "x", "tools": [*hosted, FN]}, hosted_tools=REFUSE)
    assert err.param == "tools" and "web_search" in err.message and "mcp" in err.message


def test_with_no_tool_left_there_is_no_choice_and_no_parallel_calls() -> None:
    t = translate({"input": "x", "tools": [{"type": "web_search"}], "tool_choice": "required",
                   "parallel_tool_calls": True})
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(t.chat)


@pytest.mark.parametrize(("choice", "chat"), [
    ({"type": "function", "name": "weather"},
     {"type": "function", "function": {"name": "weather"}}),
    ({"type": "function", "name": "find", "namespace": "crm"},
     {"type": "function", "function": {"name": "crm__find"}}),
    ({"type": "allowed_tools", "mode": "required",
      "tools": [{"type": "function", "name": "weather"}, {"type": "web_search"}]},
     {"type": "allowed_tools", "allowed_tools": {
         "mode": "required", "tools": [{"type": "function", "function": {"name": "weather"}}]}}),
    ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]}, "auto"),
    ("none", "none"),
])
def test_tool_choice(choice: Any, chat: Any) -> None:
    assert translate({"input": "x", "tools": [FN], "tool_choice": choice}).chat[
        "tool_choice"] == chat


# --- the other fields ---------------------------------------------------------------------------

def test_every_field_with_a_chat_completions_meaning_is_carried_over() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    t = translate({
        "model": "m", "input": "x", "stream": True, "background": True,
        "text": {"format": {"type": "json_schema", "name": "out", "schema": schema,
                            "strict": True, "description": "d"}, "verbosity": "low"},
        "reasoning": {"effort": "high", "summary": "auto"}, "max_output_tokens": 300,
        "temperature": 0.5, "top_p": 0.9, "metadata": {"k": "v"}, "service_tier": "flex",
        "user": "u", "safety_identifier": "s", "prompt_cache_key": "p",
        "deadline": "+60s", "priority": 5})
    assert t.chat == {
        "model": "m", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "out", "schema": schema, "strict": True, "description": "d"}},
        "verbosity": "low", "reasoning_effort": "high", "max_completion_tokens": 300,
        "temperature": 0.5, "top_p": 0.9, "metadata": {"k": "v"}, "service_tier": "flex",
        "user": "u", "safety_identifier": "s", "prompt_cache_key": "p", "deadline": "+60s",
        "priority": 5}
    assert (t.stream, t.background, t.store) == (True, True, True)


def test_json_object_and_text_formats() -> None:
    assert translate({"input": "x", "text": {"format": {"type": "json_object"}}}).chat[
        "response_format"] == {"type": "json_object"}
    assert "response_format" not in translate(
        {"input": "x", "text": {"format": {"type": "text"}}}).chat


def test_fields_with_no_chat_completions_meaning_are_ignored_and_listed() -> None:
    t = translate({"input": "x", "include": ["reasoning.encrypted_content",
                                             "message.output_text.logprobs"],
                   "client_metadata": {"a": "b"}, "truncation": "auto", "max_tool_calls": 3,
                   "stream_options": {"include_obfuscation": False}})
    assert t.ignored == ["client_metadata", "max_tool_calls", "stream_options",
                         "include:reasoning.encrypted_content",
                         "include:message.output_text.logprobs"]
    assert set(t.chat) == {"messages"}
    assert t.echo.truncation == "auto"


def test_a_field_the_responses_api_does_not_define_reaches_the_provider() -> None:
    t = translate({"input": "x", "enable_thinking": True, "thinking_budget": 512,
                   "top_k": 20})
    assert (t.chat["enable_thinking"], t.chat["thinking_budget"], t.chat["top_k"]) == (
        True, 512, 20)


def test_store_false_without_background_is_accepted() -> None:
    t = translate({"input": "x", "store": False})
    assert t.store is False and t.echo.store is False


# --- the Codex CLI's request --------------------------------------------------------------------

def test_the_codex_cli_request_is_accepted_and_translated() -> None:
    raw = CODEX.read_bytes()
    body = orjson.loads(raw)
    t = translate(copy.deepcopy(body))
    chat = t.chat
    # Four input messages: two developer prompts (system now), two user messages.
    assert [m["role"] for m in chat["messages"]] == ["system", "system", "user", "user"]
    assert all(isinstance(m["content"], str) for m in chat["messages"])
    assert [m["content"] for m in chat["messages"]] == [  # every word of the prompt, in order
        "\n".join(part["text"] for part in item["content"]) for item in body["input"]]
    assert t.origins == ["input[0]", "input[1]", "input[2]", "input[3]"]
    names = [tool["function"]["name"] for tool in chat["tools"]]
    namespace = next(tool for tool in body["tools"] if tool["type"] == "namespace")
    inner = [f"{namespace['name']}__{fn['name']}" for fn in namespace["tools"]]
    offered = [name for tool in body["tools"] for name in (
        [tool["name"]] if tool["type"] == "function" else
        inner if tool["type"] == "namespace" else [])]
    assert names == offered  # in the order the client gave them
    assert len(offered) == 7 + len(inner) and inner
    assert all(len(n) <= NAME_MAX for n in names)
    assert t.tool_names.split(inner[0]) == (namespace["name"], namespace["tools"][0]["name"])
    assert t.omitted_tools == ["web_search"]
    assert chat["tool_choice"] == "auto" and chat["parallel_tool_calls"] is True
    assert chat["prompt_cache_key"] == body["prompt_cache_key"]
    assert "reasoning_effort" not in chat  # reasoning: {"summary": "auto"} asks no effort
    assert (t.stream, t.store, t.background) == (True, False, False)
    assert t.ignored == ["client_metadata", "include:reasoning.encrypted_content",
                         "reasoning.summary"]
    assert not {"include", "client_metadata", "store", "stream", "input"} & set(chat)
    # The response object that echoes this request is one the SDK accepts.
    valid_response(protocol.response_object(RID, t.echo, model="m", created_at=1,
                                            status=protocol.QUEUED))


# --- the answer ---------------------------------------------------------------------------------

def test_an_r1_answer_is_a_reasoning_item_then_a_message() -> None:
    items = output_items({"content": "4", "reasoning_content": "2+2 is 4",
                          "finish_reason": "stop"}, RID,
                         translate({"input": "x"}).tool_names)
    assert items == [
        {"id": f"rs_{RID[5:]}_0", "type": "reasoning", "summary": [], "status": "completed",
         "content": [{"type": "reasoning_text", "text": "2+2 is 4"}]},
        {"id": f"msg_{RID[5:]}_1", "type": "message", "role": "assistant",
         "status": "completed",
         "content": [{"type": "output_text", "text": "4", "annotations": [], "logprobs": []}]}]


def test_tool_calls_are_function_call_items_namespaced_as_offered() -> None:
    t = translate({"input": "x", "tools": [FN, {
        "type": "namespace", "name": "crm", "description": "",
        "tools": [{"type": "function", "name": "find"}]}]})
    items = output_items({"content": None, "finish_reason": "tool_calls", "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
        {"type": "function", "function": {"name": "crm__find", "arguments": "{}"}}]},
        RID, t.tool_names)
    assert items == [
        {"id": f"fc_{RID[5:]}_0", "type": "function_call", "call_id": "call_a",
         "name": "weather", "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
        {"id": f"fc_{RID[5:]}_1", "type": "function_call", "call_id": f"call_{RID[5:]}_1",
         "name": "find", "namespace": "crm", "arguments": "{}", "status": "completed"}]


def test_a_refusal_an_empty_answer_and_an_incomplete_one() -> None:
    names = translate({"input": "x"}).tool_names
    refusal = output_items({"refusal": "no", "finish_reason": "stop"}, RID, names)
    assert refusal[0]["content"] == [{"type": "refusal", "refusal": "no"}]
    empty = output_items({"content": "", "finish_reason": "stop"}, RID, names)
    assert [i["type"] for i in empty] == ["message"]
    assert empty[0]["content"][0]["text"] == ""
    cut = output_items({"content": "abc", "reasoning_content": "r", "finish_reason": "length"},
                       RID, names, incomplete=True)
    assert [i["status"] for i in cut] == ["completed", "incomplete"]


@pytest.mark.parametrize(("chat", "expected"), [
    ({"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40,
      "prompt_tokens_details": {"cached_tokens": 4},
      "completion_tokens_details": {"reasoning_tokens": 20}},
     {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
      "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 20},
      "total_tokens": 40}),
    ({"prompt_tokens": 10, "completion_tokens": 5, "prompt_cache_hit_tokens": 8},  # DeepSeek
     {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
      "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
      "total_tokens": 15}),
    (None, None),
])
def test_usage(chat: dict[str, Any] | None, expected: dict[str, Any] | None) -> None:
    assert protocol.usage(chat) == expected


@pytest.mark.parametrize(("error", "code"), [
    ({"code": "http_429", "message": "slow down", "status": 429}, "rate_limit_exceeded"),
    ({"code": "http_400", "message": "bad field", "status": 400}, "invalid_prompt"),
    ({"code": "deadline_exceeded", "message": "late"}, "server_error"),
    ({"code": "attempts_exhausted", "message": "gave up"}, "server_error"),
    (None, "server_error"),
])
def test_a_task_error_is_a_response_error_the_sdk_knows(error: Any, code: str) -> None:
    mapped = protocol.error_object(error)
    assert mapped["code"] == code
    assert mapped["type"] == ((error or {}).get("code") or "provider_error")
    echo = translate({"input": "x"}).echo
    valid_response(protocol.response_object(RID, echo, model="m", created_at=1,
                                            status=protocol.FAILED, error=mapped))


@pytest.mark.parametrize("status", ["queued", "in_progress", "completed", "incomplete",
                                    "failed", "cancelled"])
def test_every_response_object_is_one_the_sdk_accepts(status: str) -> None:
    t = translate({"model": "m", "input": "x", "instructions": "i", "tools": [FN],
                   "metadata": {"k": "v"}, "reasoning": {"effort": "low"},
                   "text": {"format": {"type": "json_object"}}, "max_output_tokens": 9,
                   "temperature": 1, "background": True, "service_tier": "flex"})
    result = {"content": "{}", "reasoning_content": "r", "finish_reason": "stop",
              "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    obj = protocol.response_object(
        RID, t.echo, model="m", created_at=1, status=status,
        output=output_items(result, RID, t.tool_names, incomplete=status == "incomplete"),
        usage=protocol.usage(result["usage"]),
        incomplete_reason="max_output_tokens" if status == "incomplete" else None,
        error=protocol.error_object(None) if status == "failed" else None,
        completed_at=2 if status in protocol.TERMINAL_STATUSES else None)
    parsed = valid_response(obj)
    assert parsed.status == status and parsed.id == RID
    assert parsed.output_text == "{}"
    assert parsed.metadata == {"k": "v"} and parsed.background is True


def test_the_sdk_model_really_validates() -> None:
    """The check above can fail: a response missing a required field is refused."""
    obj = protocol.response_object(RID, Echo(), model="m", created_at=1, status="completed")
    del obj["tools"]
    with pytest.raises(ValueError):
        valid_response(obj)


# --- input items as listed ----------------------------------------------------------------------

def test_input_items_are_listed_with_ids_and_paged_as_openai_pages() -> None:
    from openai.types.responses import ResponseItemList

    t = translate({"input": [
        {"role": "user", "content": "one"},
        {"type": "message", "id": "msg_mine", "role": "developer",
         "content": [{"type": "input_text", "text": "two"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "3"}]})
    items = protocol.listed_input(t.input_items, RID)
    assert [i["id"] for i in items] == [f"msg_{RID[5:]}_in0", "msg_mine", f"fc_{RID[5:]}_in2",
                                        f"fco_{RID[5:]}_in3"]
    assert items[0]["content"] == [{"type": "input_text", "text": "one"}]
    first = protocol.page(items, limit=3, order="asc", after=None)
    assert [i["id"] for i in first["data"]] == [i["id"] for i in items[:3]]
    assert first["has_more"] and first["last_id"] == items[2]["id"]
    ResponseItemList.model_validate(first)
    rest = protocol.page(items, limit=3, order="asc", after=first["last_id"])
    assert [i["id"] for i in rest["data"]] == [items[3]["id"]] and not rest["has_more"]
    newest = protocol.page(items, limit=20, order="desc", after=None)
    assert [i["id"] for i in newest["data"]] == [i["id"] for i in reversed(items)]
    assert protocol.page(items, limit=5, order="asc", after="nope")["data"] == []
