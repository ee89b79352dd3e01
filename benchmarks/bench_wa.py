"""Weight-and-activation mixed precision under BOPs budgets: does the allocated search beat the best uniform W/A
policy, and does the knapsack alone? Real accuracy, fresh databases (one per --tag).

    python -m benchmarks.bench_wa --models resnet_fashion --trials 16 --tag run1

1. The uniform W/A grid: every weight bits x activation bits pair of the space (BITS x ACTS) at sparsity 0 (a BOPs
   budget leaves sparsity free, and pruning only costs accuracy), each recovered by the study's FR.
2. Budgets: the uniform pairs' BOPs and 3 points evenly between each two consecutive ones, above the cheapest pair
   (at its BOPs every policy is that pair), where the best uniform policy that fits loses >= LOSS points to the
   original: the --budgets largest such (the tightest budgets, just above the cheapest pair, are left for last).
3. At each budget: an allocated search (TPE, objective OD alone, max_bops = the budget, activation bits searched,
   warm starts under the budget, --trials trials) and its best-OD feasible pick; and the knapsack pick alone (the
   sensitivity table's least summed OD within the budget's BOPs, weights dense; no search). Real accuracy of each.
4. Label-free proxies against real accuracy over every evaluated policy (Spearman, sign flipped: +1 = lower score,
   higher accuracy), over all of them and over the low-bit ones (2-bit weights or <= 4-bit activations).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial
from scipy.stats import spearmanr

from benchmarks.bench_search import PROXIES, Evaluator
from frandi_core import LayerSetting, Policy, output_discrepancy
from search import AllocatedSpace, TrialRecord, TrialRunner, open_for
from studies.experiments import Bench, Report, bench, markdown_table, parse, parser, policy_of, run_search, variant

BITS = (2, 3, 4, 8)
ACTS = (3, 4, 8)
SPACE = {  # sparsity barely matters under BOPs: a short range keeps trials where accuracy is
    "mode": "allocated",
    "bits": BITS,
    "act_bits": ACTS,
    "sparsity": (0.0, 0.3),
    "sparsity_step": 0.1,
    "offsets": 2,
    "warm_starts": 4,
}
LOSS = 2.0  # a budget counts where the best uniform policy loses at least this many points


PROXIES_WA = (*PROXIES, "od_before")  # and OD before FR: does recovery blur the ranking across bit widths?


class WAEvaluator(Evaluator):
    """bench_search's evaluator, also keeping each policy's OD before FR."""

    def __call__(self, policy: Policy, label: str) -> dict[str, Any]:
        if policy not in self.rows:
            row = super().__call__(policy, label)
            od_before = output_discrepancy(self.b.compressed(policy), self.heldout, self.teacher_out)
            row["od_before"] = round(od_before, 4)
        return self.rows[policy]


def uniform_grid(space: AllocatedSpace) -> list[tuple[int, int, Policy]]:
    return [(w, a, space.uniform(0.0, w, a)) for w in space.bits for a in space.acts]


def choose_budgets(original: float, grid: list[tuple[float, float]]) -> list[float]:
    """BOPs budgets (largest first) where the best uniform policy that fits, of ``grid`` (BOPs, accuracy), loses
    >= LOSS points: the pairs' BOPs and 3 points evenly between consecutive ones, above the cheapest pair."""
    costs = sorted({c for c, _ in grid})
    points = set(costs[1:]) | {lo + (hi - lo) * j / 4 for lo, hi in zip(costs, costs[1:], strict=False)
                               for j in (1, 2, 3)}
    keep = [x for x in points if original - max(acc for c, acc in grid if c <= x) >= LOSS]
    return sorted(keep, reverse=True)


def knapsack_pick(space: AllocatedSpace, limit: float) -> Policy:
    """The knapsack alone at a BOPs budget: per layer (sparsity, weight bits, activation bits) of the least summed
    sensitivity within ``limit`` bit operations (the fixed layers' included) and the dense top-bit bytes."""
    fixed = sum(space.macs[n] * (s.bits or 32) * (s.act_bits or 32) for n, s in space.base.fixed)
    budget = sum(space.layer_bytes(n, LayerSetting(0.0, max(space.bits))) for n in space.searched)
    chosen = space.knapsack(budget, limit - fixed)
    assert chosen is not None, f"no policy within {limit:g} BOPs"
    return Policy.from_dict(dict(space.base.fixed) | chosen)


def low_bits(policy: Policy) -> bool:
    return any(s.bits == 2 or (s.act_bits is not None and s.act_bits <= 4) for _, s in policy.layers)


def best_pick(trials: list[FrozenTrial], limit: float) -> FrozenTrial | None:
    feasible = [t for t in trials if float(t.user_attrs["bops"]) <= limit]
    return min(feasible, key=lambda t: t.values[0]) if feasible else None


def run(b: Bench, args: Any, report: Report) -> list[dict[str, Any]]:
    space_keys = SPACE | {"bits": tuple(args.bits), "act_bits": tuple(args.acts)}
    probe_cfg = variant(b.cfg, f"wa-{args.tag}-probe", study={"n_trials": 1}, space=space_keys)
    with open_for(probe_cfg, args.storage) as st:
        t0 = time.perf_counter()
        space = TrialRunner(probe_cfg, st).space
        print(f"[{b.name}] allocated W/A space built in {time.perf_counter() - t0:.0f} s", flush=True)
    assert isinstance(space, AllocatedSpace)
    ev = WAEvaluator(b)
    grid = []
    for w, a, policy in uniform_grid(space):
        row = ev(policy, f"uniform W{w}A{a}")
        grid.append((space.bops(policy), w, a, row))
        print(f"[{b.name}] uniform W{w}A{a}: {row}", flush=True)
    budgets = choose_budgets(b.original, [(c, r["accuracy"]) for c, _, _, r in grid])[: args.budgets]
    rows = []
    for cost in budgets:
        fits = [(r, ww, aa) for c, ww, aa, r in grid if c <= cost]
        best_u, bw, ba = max(fits, key=lambda f: f[0]["accuracy"])
        knap = ev(knapsack_pick(space, cost), f"knapsack at {cost / 1e9:.4f} GBOPs")
        study = {"n_trials": args.trials, "baselines": (), "objectives": ("od",), "min_ratio": None,
                 "max_bops": float(cost)}
        cfg = variant(b.cfg, f"wa-{args.tag}-{round(cost)}", study=study, space=space_keys)
        t0 = time.perf_counter()
        result = run_search(cfg, args.storage)
        reused = sum(TrialRecord.from_trial(t).reused_from is not None for t in result.trials)
        pick = best_pick(result.trials, cost)
        row: dict[str, Any] = {
            "budget GBOPs": round(cost / 1e9, 4),
            "original": round(b.original, 2),
            "best uniform": f"W{bw}A{ba} {best_u['accuracy']:.2f}",
            "uniform - original": round(best_u["accuracy"] - b.original, 2),
            "knapsack": f"{knap['accuracy']:.2f} (OD {knap['od']:.3f})",
            "knapsack - uniform": round(knap["accuracy"] - best_u["accuracy"], 2),
            "trials (reused)": f"{len(result.trials)} ({reused})",
            "search seconds": round(time.perf_counter() - t0),
        }
        if pick is not None:
            searched = ev(policy_of(pick), f"search best OD at {cost / 1e9:.4f} GBOPs (trial {pick.number})")
            row["search best OD"] = f"{searched['accuracy']:.2f} (OD {searched['od']:.3f})"
            row["search - uniform"] = round(searched["accuracy"] - best_u["accuracy"], 2)
        rows.append(row)
        print(f"[{b.name}] {row}", flush=True)
    report.add(
        f"W/A budgets ({args.trials}-trial allocated searches, TPE, objective OD, max_bops = the budget; space "
        f"{space_keys}; budgets: see the module docstring, loss >= {LOSS} points, the {args.budgets} largest). "
        "Cells: real accuracy (%).\n\n"
        + markdown_table(rows)
    )
    evaluated = list(ev.rows.values())
    groups = {"all": evaluated}
    low = [r for p, r in ev.rows.items() if low_bits(p)]
    if len(low) >= 3:
        groups["2-bit weights or <= 4-bit activations"] = low
    corr = []
    for name, rs in groups.items():
        acc = [r["accuracy"] for r in rs]
        corr.append({"policies": f"{name} ({len(rs)})"} | {
            p: round(-float(spearmanr([r[p] for r in rs], acc).statistic), 3) for p in PROXIES_WA})
    report.add(
        "Label-free proxies against real accuracy (Spearman, sign flipped: +1 = lower score, higher accuracy):\n\n"
        + markdown_table(corr) + "\n\nEvery evaluated policy:\n\n" + markdown_table(evaluated)
    )
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__)
    p.add_argument("--trials", type=int, default=60, help="trials per allocated search")
    p.add_argument("--budgets", type=int, default=3, help="BOPs budgets per model")
    p.add_argument("--tag", default="bench", help="study-name suffix: a new tag is a fresh study")
    p.add_argument("--bits", type=int, nargs="+", default=list(BITS), help="weight bit widths of the space")
    p.add_argument("--acts", type=int, nargs="+", default=list(ACTS), help="activation bit widths of the space")
    a = parse(p, argv)
    rows: list[dict[str, Any]] = []
    for name in a.models:
        with bench(name, a) as b:
            report = Report("bench_wa", f"{name}{a.suffix}", f"W/A mixed precision under BOPs: {name}", Path(a.out),
                            a.argv, module="benchmarks.bench_wa")
            rows += run(b, a, report)
            report.write()
    return rows


if __name__ == "__main__":
    main()
