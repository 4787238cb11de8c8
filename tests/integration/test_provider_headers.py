"""What a provider's headers say, taken at its word only so far. Nothing it sends stops calls
for longer than RETRY_AFTER_CAP_S: a successful answer saying no request is left until a reset
114 years away pauses the provider for the cap, then one call goes as a probe and its answer
decides. A stream labelled text/plain is still read as the stream it is. The real processor
(or its runner), the real governor steps on a real Redis, the mock provider over HTTP."""

from __future__ import annotations

import asyncio

import pytest

from services.processor.runner import Outcome, TaskRun
from tests.integration.kit import BURST_TIMEOUT_S, QUIET, Core

FAR = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "0",
       "x-ratelimit-reset-requests": "999999h"}


@pytest.mark.first_store_only  # the governor lives in Redis
async def test_a_far_ratelimit_reset_stops_calls_for_the_cap_only(core: Core) -> None:
    first = await core.submit({"fault": {"headers": FAR}, **QUIET})
    processor = core.processor(RETRY_AFTER_CAP_S="1")
    await core.burst(processor)
    second = await core.submit(QUIET)
    # Before the cap, this burst waited 114 years for the announced reset (the hang guard
    # ended it): now it waits the cap, then its call is the probe, answered without headers.
    await core.burst(core.processor(RETRY_AFTER_CAP_S="1"))
    for tid in (first, second):
        row = await core.store.get_task(tid)
        assert row is not None and row["status"] == "succeeded", (tid, row)
    assert len(await core.mock_requests()) == 2


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8",
                                          "application/octet-stream"])
async def test_a_stream_labelled_otherwise_is_read_as_a_stream_in_one_call(
        core: Core, content_type: str) -> None:
    # Before: read as a JSON answer, invalid_answer, retried: three full calls, then failed.
    tid = await core.submit({"fault": {"content_type": content_type}, "content_tokens": 6,
                             **QUIET})
    async with asyncio.timeout(BURST_TIMEOUT_S):
        assert await TaskRun(core.processor().deps, tid, "b-test").run() is Outcome.DONE
    [call] = await core.mock_requests()
    row = await core.store.get_task(tid)
    assert row is not None
    assert (row["status"], row["content"], row["attempts"]) == ("succeeded", call["content"], 1)
