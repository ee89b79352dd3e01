"""bench_wa's budgets: between uniform levels, where the best uniform policy that fits loses >= 2 points."""

from __future__ import annotations

from benchmarks.bench_wa import choose_budgets


def test_budgets_lie_where_uniform_breaks_largest_first() -> None:
    grid = [(8.0, 31.6), (12.0, 90.5), (16.0, 90.4), (32.0, 91.2)]  # (BOPs, accuracy) of uniform pairs
    budgets = choose_budgets(91.6, grid)
    assert budgets == [11.0, 10.0, 9.0]  # between the collapsed cheapest pair and the next; never at 8 itself
    assert choose_budgets(91.6, [(8.0, 91.0), (12.0, 91.5)]) == []  # uniform never loses 2 points
