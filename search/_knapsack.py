"""A multiple-choice knapsack: one setting per layer, least total cost in sensitivity, within a byte budget.

As ZeroQ's Pareto-frontier method and MCT's mixed precision do: the sensitivities (OD when only that layer is
compressed) are taken as additive, so a dynamic program over the budget finds the best combination exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESOLUTION = 4000  # budget cells: costs are rounded up to budget / RESOLUTION bytes, so a result never overshoots


def choose(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]], budget: int) -> list[int] | None:
    """Index of one option per group minimizing the summed values with summed costs <= budget; None if no
    combination fits. Exact when the budget is under RESOLUTION bytes, else within one cell of the optimum."""
    unit = max(1, math.ceil(budget / RESOLUTION))
    cells = budget // unit
    best = np.zeros(cells + 1)  # least value of the groups so far within x cells
    picks = []
    for cost, value in zip(costs, values, strict=True):
        new = np.full(cells + 1, np.inf)
        pick = np.full(cells + 1, -1)
        for j, (c, v) in enumerate(zip(cost, value, strict=True)):
            c = math.ceil(c / unit)
            if c > cells:
                continue
            cand = np.full(cells + 1, np.inf)
            cand[c:] = best[: cells + 1 - c] + v
            better = cand < new
            new[better], pick[better] = cand[better], j
        best = new
        picks.append(pick)
    if not np.isfinite(best[cells]):
        return None
    out, x = [], cells
    for cost, pick in zip(reversed(costs), reversed(picks), strict=True):
        j = int(pick[x])
        out.append(j)
        x -= math.ceil(cost[j] / unit)
    return out[::-1]


def choose_within(
    costs: Sequence[Sequence[int]],
    values: Sequence[Sequence[float]],
    budget: int,
    extra: Sequence[Sequence[float]],
    limit: float,
    *,
    rounds: int = 20,
) -> list[int] | None:
    """choose() under a second budget too: summed ``extra`` (BOPs, predicted latency) <= ``limit``.

    A Lagrangian relaxation, as HAWQ-V3's integer program is solved in practice: the byte budget stays exact (the
    dynamic program), the second one is priced into the values, value + lam * extra, with the least lam (found by
    bisection) whose pick meets ``limit``. None when no pick within ``budget`` bytes meets it.
    """
    picks = choose(costs, values, budget)
    if picks is None:
        return None

    def spent(p: list[int]) -> float:
        return sum(e[j] for e, j in zip(extra, p, strict=True))

    if spent(picks) <= limit:
        return picks
    scale = max((abs(v) for row in values for v in row), default=1.0) or 1.0
    span = max((abs(e) for row in extra for e in row), default=1.0) or 1.0

    def priced(lam: float) -> list[int] | None:
        return choose(costs, [[v + lam * e / span for v, e in zip(vr, er, strict=True)] for vr, er in
                              zip(values, extra, strict=True)], budget)

    best = priced(scale * 1e9)  # the extra all but alone decides: the least extra within the byte budget
    if best is None or spent(best) > limit:
        return None
    lo, hi = 0.0, scale
    while hi < scale * 1e9:
        p = priced(hi)
        if p is not None and spent(p) <= limit:
            best = p
            break
        lo, hi = hi, hi * 4
    for _ in range(rounds):
        mid = (lo + hi) / 2
        p = priced(mid)
        if p is not None and spent(p) <= limit:
            hi, best = mid, p
        else:
            lo = mid
    return best
