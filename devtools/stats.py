"""Figures the tests and benchmarks report."""

from __future__ import annotations


def percentile(values: list[float], pct: float) -> float:
    """The `pct` percentile of `values` (nearest rank); NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]
