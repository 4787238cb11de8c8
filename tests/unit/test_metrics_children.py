"""shared.metrics.child: a labelled series looked up once, then kept (the per-task series)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shared import metrics


def test_a_kept_series_is_the_labelled_one_and_counts_there() -> None:
    registry = CollectorRegistry()
    counter = Counter("kept_things", "test", ["status", "tenant"], registry=registry)
    metrics.child(counter, "done", "a").inc()
    metrics.child(counter, "done", "a").inc()
    metrics.child(counter, "failed", "a").inc()
    assert metrics.child(counter, "done", "a") is counter.labels("done", "a")
    assert registry.get_sample_value("kept_things_total", {"status": "done", "tenant": "a"}) == 2
    assert registry.get_sample_value("kept_things_total",
                                     {"status": "failed", "tenant": "a"}) == 1
