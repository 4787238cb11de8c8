"""What a finished answer stores beyond choice 0's text, and what the governor counts for an
answer that reported no usage (services/processor/results.py)."""

from __future__ import annotations

from services.processor.assembler import ChoiceResult, ToolCall, Usage
from services.processor.provider import Completion
from services.processor.results import answer_extras, counted_usage, usage_dict
from shared import tasks

CALL = ToolCall("call_1", "function", "get_weather", '{"city": "Paris"}')


def test_no_usage_is_null_and_the_governor_counts_the_text_it_saw() -> None:
    done = Completion(ChoiceResult(0, content="x" * 40, reasoning="y" * 20, tool_calls=[CALL],
                                   finish_reason="tool_calls"), None, streamed=True)
    assert usage_dict(done.usage) is None
    request = {"messages": [{"role": "user", "content": "z" * 400}], "max_tokens": 999}
    counted = counted_usage(request, done)
    chars = 40 + 20 + len(CALL.arguments) + len(CALL.name)
    assert (counted.prompt_tokens, counted.completion_tokens) == (100, -(-chars // 4))
    assert counted.total_tokens == counted.prompt_tokens + counted.completion_tokens


def test_usage_keeps_its_details_and_the_store_keeps_what_its_columns_do_not() -> None:
    raw = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
           "prompt_tokens_details": {"cached_tokens": 4},
           "completion_tokens_details": {"reasoning_tokens": 2}}
    usage = usage_dict(Usage(9, 3, 12, raw))
    assert usage == raw
    first = ChoiceResult(0, content="", tool_calls=[CALL], finish_reason="tool_calls",
                         logprobs={"content": [{"token": "a", "logprob": -0.1}]})
    done = Completion(first, None, streamed=True,
                      choices={0: first, 1: ChoiceResult(1, content="b", finish_reason="stop")},
                      system_fingerprint="fp_1")
    extras = answer_extras(done, usage)
    assert extras["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert extras["logprobs"] == first.logprobs and extras["system_fingerprint"] == "fp_1"
    assert [c["index"] for c in extras["choices"]] == [0, 1] and extras["usage"] == usage
    result = {**tasks.result_dict("", "", "tool_calls", usage), **extras}
    row = {"status": "succeeded", "id": "tsk_1", "content": "", "reasoning_content": "",
           "finish_reason": "tool_calls", "prompt_tokens": 9, "completion_tokens": 3,
           "total_tokens": 12, "result_extra": tasks.stored_extras(result)}
    assert tasks.view_from_row(row)["result"] == result
    plain = tasks.result_dict("hi", "", "stop", {"prompt_tokens": 1, "completion_tokens": 1,
                                                  "total_tokens": 2})
    assert tasks.stored_extras(plain) is None  # a plain answer adds nothing to its row
