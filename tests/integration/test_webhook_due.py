"""The webhook outbox's queries on both stores: which deliveries are due (per target and per
tenant caps, what is skipped), a target held back, a deleted endpoint's deliveries ended."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest

from services.edge.webhooks.store import (
    FAILED,
    PENDING,
    Delivery,
    WebhookStore,
    delivery_statement,
)
from shared.store import make_store


@pytest.fixture
async def hooks(store_url: str) -> AsyncIterator[WebhookStore]:
    store = make_store(store_url)
    await store.open()
    yield WebhookStore(store)
    await store.close()


def delivery(n: int, endpoint: str, tenant: str, at: int) -> Delivery:
    return Delivery(f"msg_{endpoint}_{n}", tenant, endpoint, f"http://{endpoint}.example/h",
                    "webhook.test", "{}", 0, at)


async def fill(hooks: WebhookStore) -> None:
    # evil's tarpit has 300 deliveries due first; then evil's other endpoint; then good's.
    rows = [delivery(i, "pit", "evil", 1_000 + i) for i in range(300)]
    rows += [delivery(i, "other", "evil", 5_000 + i) for i in range(5)]
    rows += [delivery(i, f"good{i % 3}", "good", 6_000 + i) for i in range(9)]
    await hooks.enqueue([delivery_statement(d) for d in rows])


async def test_due_takes_a_few_of_each_target_and_tenant_earliest_first(
        hooks: WebhookStore) -> None:
    await fill(hooks)
    due = await hooks.due(10_000, per_target=2, per_tenant=3, limit=100)
    by_target = Counter(d.endpoint_id for d in due)
    assert by_target == {"pit": 2, "other": 1, "good0": 1, "good1": 1, "good2": 1}
    assert [d.created_at for d in due] == sorted(d.created_at for d in due)
    assert due[0].id == "msg_pit_0"
    skipped = await hooks.due(10_000, per_target=2, per_tenant=3, limit=100,
                              skip_ids=["msg_pit_0", "msg_pit_1"], skip_tenants=["good"])
    assert [d.id for d in skipped] == ["msg_pit_2", "msg_pit_3", "msg_other_0"]
    assert await hooks.due(999, per_target=2, per_tenant=3, limit=100) == []
    many_skips = [f"msg_x_{i}" for i in range(70)] + ["msg_pit_0"]  # a bigger padded list
    assert "msg_pit_0" not in [d.id for d in await hooks.due(
        10_000, per_target=2, per_tenant=3, limit=100, skip_ids=many_skips)]


async def test_a_target_held_back_is_not_due_until_then(hooks: WebhookStore) -> None:
    await fill(hooks)
    await hooks.hold_back("pit", "http://pit.example/h", 50_000)
    due = await hooks.due(10_000, per_target=2, per_tenant=3, limit=100)
    assert "pit" not in {d.endpoint_id for d in due}
    later = await hooks.due(50_000, per_target=2, per_tenant=3, limit=100)
    assert "pit" in {d.endpoint_id for d in later}


async def test_a_deleted_endpoints_deliveries_end_with_an_attempt_saying_why(
        hooks: WebhookStore) -> None:
    await fill(hooks)
    await hooks.end_for_deleted("pit", 7_000)
    rows = await hooks.store.fetch(
        "SELECT state, attempts, last_error FROM webhook_deliveries WHERE endpoint_id = ?",
        "pit")
    assert {(r["state"], r["attempts"], r["last_error"]) for r in rows} == {
        (FAILED, 1, "endpoint deleted")}
    [n] = await hooks.store.fetch(
        "SELECT COUNT(*) AS n FROM webhook_attempts WHERE error = ?", "endpoint deleted")
    assert n["n"] == 300
    others = await hooks.store.fetch(
        "SELECT DISTINCT state FROM webhook_deliveries WHERE endpoint_id <> ?", "pit")
    assert [r["state"] for r in others] == [PENDING]
