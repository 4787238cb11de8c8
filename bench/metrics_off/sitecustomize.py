"""Loaded at start-up by every Python process whose PYTHONPATH names this folder (the bench's
"metrics off" runs only): prometheus_client's metric updates become no-ops, so the same code
runs with and without the cost of its metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import metrics


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


def _self(self: Any, *_args: Any, **_kwargs: Any) -> Any:
    return self


metrics.MetricWrapperBase.labels = _self  # type: ignore[method-assign]
for _cls, _names in ((metrics.Counter, ("inc",)), (metrics.Gauge, ("inc", "dec", "set")),
                     (metrics.Histogram, ("observe",)), (metrics.Summary, ("observe",))):
    for _name in _names:
        setattr(_cls, _name, _nothing)
