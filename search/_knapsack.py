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
