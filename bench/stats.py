"""Small statistics helpers: percentiles by linear interpolation, rounding for the report."""

from __future__ import annotations

from collections.abc import Sequence


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), interpolated between the closest ranks."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float], digits: int = 2) -> dict[str, float]:
    """p50, p99, mean and max of ``values``, rounded."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(pct(values, 50), digits),
            "p99": round(pct(values, 99), digits),
            "mean": round(sum(values) / len(values), digits), "max": round(max(values), digits)}
