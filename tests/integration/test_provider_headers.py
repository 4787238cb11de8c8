"""Nothing a provider sends stops calls for longer than RETRY_AFTER_CAP_S: a successful answer
saying no request is left until a reset 114 years away pauses the provider for the cap, then
one call goes as a probe and its answer decides. The real processor, the real governor steps
on a real Redis, the mock provider over HTTP."""

from __future__ import annotations

import pytest

from tests.integration.kit import QUIET, Core

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
