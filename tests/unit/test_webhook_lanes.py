"""The webhook sender's lanes: per-target, per-tenant and per-edge caps, and a target's run of
failures (pure bookkeeping, no I/O)."""

from __future__ import annotations

import pytest

from services.edge.webhooks import lanes as lanes_module
from services.edge.webhooks.lanes import Lanes, backoff_s
from services.edge.webhooks.store import Delivery


def delivery(n: int, endpoint: str = "we_a", tenant: str = "acme",
             url: str = "https://a.example/hook") -> Delivery:
    return Delivery(f"msg_{endpoint}_{n}", tenant, endpoint, url, "webhook.test", "{}", 0, 0)


def test_a_target_takes_at_most_its_concurrency_and_others_go_on() -> None:
    lanes = Lanes(per_target=2, per_tenant=10, total=100)
    slow = [delivery(i, "we_slow") for i in range(5)]
    assert [lanes.take(d) for d in slow] == [True, True, False, False, False]
    assert lanes.take(delivery(0, "we_fast"))  # another endpoint of the same tenant
    assert lanes.take(delivery(0, "we_other", tenant="globex"))
    assert not lanes.take(slow[0]), "a delivery in flight is not started twice"
    lanes.done(slow[0], ok=False)
    assert lanes.take(slow[2])


def test_a_tenant_takes_at_most_its_share_and_the_edge_its_total() -> None:
    lanes = Lanes(per_target=2, per_tenant=3, total=5)
    mine = [delivery(0, f"we_{i}") for i in range(4)]
    assert [lanes.take(d) for d in mine] == [True, True, True, False]
    assert lanes.full_tenants() == ["acme"]
    theirs = [delivery(0, f"we_g{i}", tenant="globex") for i in range(3)]
    assert [lanes.take(d) for d in theirs] == [True, True, False]
    assert lanes.room() == 0
    lanes.done(mine[0], ok=True)
    assert lanes.full_tenants() == [] and lanes.room() == 1


def test_a_targets_failures_in_a_row_are_its_own_and_a_success_ends_them() -> None:
    lanes = Lanes(per_target=1, per_tenant=10, total=100)
    runs = []
    for i in range(4):
        d = delivery(i, "we_pit")
        assert lanes.take(d)
        runs.append(lanes.done(d, ok=False))
    assert runs == [1, 2, 3, 4]
    healthy = delivery(0, "we_ok")
    assert lanes.take(healthy) and lanes.done(healthy, ok=True) == 0
    d = delivery(9, "we_pit")
    assert lanes.take(d) and lanes.done(d, ok=True) == 0
    assert lanes.lanes == {}, "nothing kept for targets that are fine"


def test_the_backoff_starts_at_the_second_failure_and_doubles_to_the_cap() -> None:
    assert [backoff_s(n, 5.0, 60.0) for n in range(7)] == [0, 0, 5, 10, 20, 40, 60]


def test_failing_targets_are_remembered_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes_module, "MAX_REMEMBERED", 3)
    lanes = Lanes(per_target=1, per_tenant=10, total=100)
    for i in range(5):
        d = delivery(0, f"we_{i}")
        lanes.take(d)
        lanes.done(d, ok=False)
    assert [k[0] for k in lanes.lanes] == ["we_2", "we_3", "we_4"]
