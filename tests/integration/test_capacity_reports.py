"""A processor's capacity reports: at most one per REPORT_GAP_S under load, the asks of the gap
carried together by the next; the first after a quiet spell at once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from harness.waiting import until
from services.processor import worker
from tests.integration.kit import Core


async def test_reports_asked_for_after_every_task_go_at_most_one_per_gap(core: Core) -> None:
    p = core.processor(GOVERNOR="false")  # its room: its free slots, whatever the provider's
    await core.redis.set(core.keys.waiting_count, 5)  # tasks wait: each report publishes
    pubsub = core.redis.pubsub()
    await pubsub.subscribe(core.keys.batch_channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    reporter = asyncio.create_task(_report_forever(p))
    loop = asyncio.get_running_loop()
    started, asks = loop.time(), 0
    try:
        while loop.time() - started < 0.05:  # tasks finishing all the time
            for _ in range(5):
                await p._safe_report(1)
                asks += 1
            await asyncio.sleep(0.0005)
        elapsed = loop.time() - started
        await until(lambda: not (p._taken or p._report_due.is_set()), 5,
                    "the last asks reported", interval=0.001)
    finally:
        await _stop(p, reporter)
    published = 0
    while await pubsub.get_message(timeout=0.2) is not None:
        published += 1
    await pubsub.aclose()
    # Each report went out once its gap had passed; every ask was carried by one of them.
    assert 2 <= published <= elapsed / worker.REPORT_GAP_S + 2, (published, asks, elapsed)
    assert asks > published * 4


async def test_the_first_report_after_a_quiet_spell_goes_at_once(
        core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "REPORT_GAP_S", 60.0)
    p = core.processor()
    await p._safe_report(0)
    async with asyncio.timeout(5):  # not after the (long) gap
        await p._report_when_due()
    assert await core.redis.hget(core.keys.processors_free, p.name) is not None
    await p._safe_report(0)  # the next, within the gap, waits for it
    second = asyncio.create_task(p._report_when_due())
    done, _ = await asyncio.wait({second}, timeout=0.3)
    assert not done
    second.cancel()  # in its sleep, not in a Redis call
    with contextlib.suppress(asyncio.CancelledError):
        await second


async def _report_forever(p: worker.Processor) -> None:
    while not p.stopping.is_set():
        await p._report_when_due()


async def _stop(p: worker.Processor, reporter: asyncio.Task[None]) -> None:
    """As the processor stops its reporter: by its stop flag and a last ask, not by
    cancelling it mid-call (a cancellation that meets redis-py's own timeout can be lost)."""
    p.stopping.set()
    await p._safe_report(0)
    async with asyncio.timeout(5):
        await reporter
