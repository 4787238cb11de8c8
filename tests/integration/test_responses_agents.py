"""The openai-agents SDK (it speaks the Responses API by default), unchanged, runs an agent
with one function tool against Sluice and the mock provider: the model calls the tool, the SDK
runs it and sends its output back, and the model answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.batch_kit import BatchRig, batch_rig
from tests.integration.kit import Core

SECRET = "pineapple"


@pytest.fixture
async def rig(core: Core, tmp_path: Path) -> BatchRig:  # type: ignore[misc]
    async with batch_rig(core, tmp_path) as r:
        yield r


@pytest.mark.first_store_only
async def test_an_agent_calls_its_function_tool_and_answers(rig: BatchRig) -> None:
    # Imported here, not at the top: the SDK takes 1.4 s of CPU to import, which every
    # worker of a parallel run would pay while collecting, for this one test.
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from agents.items import ToolCallItem, ToolCallOutputItem

    set_tracing_disabled(True)  # no trace export to OpenAI from a test
    calls: list[str] = []

    @function_tool
    def secret_word() -> str:
        """The secret word of the day."""
        calls.append("secret_word")
        return SECRET

    agent = Agent(
        name="helper", instructions="Answer with the secret word.", tools=[secret_word],
        model=OpenAIResponsesModel(model="mock-r1", openai_client=rig.client),
        # The mock's options ride in metadata, whose values the SDK types as strings.
        model_settings=ModelSettings(extra_body={"metadata": {"mock": {
            "reasoning_tokens": 0, "content_tokens": 5}}}))
    result = await Runner.run(agent, "What is the secret word?", max_turns=4)
    assert calls == ["secret_word"], "the model did not call the tool"
    kinds = [type(item) for item in result.new_items]
    assert ToolCallItem in kinds and ToolCallOutputItem in kinds
    [output] = [item for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    assert output.output == SECRET
    assert isinstance(result.final_output, str) and result.final_output
