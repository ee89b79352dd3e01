"""Weight-and-activation mixed precision under BOPs budgets: does the allocated search beat the best uniform W/A
policy, and does the knapsack alone? Real accuracy, fresh databases (one per --tag).

    python -m benchmarks.bench_wa --models resnet_fashion --trials 16 --tag run1

1. The uniform W/A grid: every weight bits x activation bits pair of the space (BITS x ACTS) at sparsity 0 (a BOPs
   budget leaves sparsity free, and pruning only costs accuracy), each recovered by the study's FR.
2. Budgets: the BOPs of uniform pairs where the best uniform policy that fits loses >= 2 points to the original but
   is not collapsed (> COLLAPSE %): the --budgets cheapest such.
3. At each budget: an allocated search (TPE, objective OD alone, max_bops = the budget, activation bits searched,
   warm starts under the budget, --trials trials) and its best-OD feasible pick; and the knapsack pick alone (the
   sensitivity rule at the budget's own uniform level, no search). Real accuracy of each.
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
from frandi_core import Policy, output_discrepancy
from search import AllocatedSpace, TrialRunner, open_for
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
COLLAPSE = 50.0  # ... and keeps more than this accuracy (short of budgets where every policy collapses)


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
    budgets = []
    for cost, w, a, _ in sorted(grid, key=lambda g: g[0]):
        best = max((r["accuracy"] for c, _, _, r in grid if c <= cost), default=0.0)
        if b.original - best >= LOSS and best > COLLAPSE and cost not in [x[0] for x in budgets]:
            budgets.append((cost, w, a))
    budgets = budgets[: args.budgets]
    rows = []
    for cost, w, a in budgets:
        fits = [(r, ww, aa) for c, ww, aa, r in grid if c <= cost]
        best_u, bw, ba = max(fits, key=lambda f: f[0]["accuracy"])
        knap = ev(space.policy(space.uniform_params(0.0, w, "sensitivity", a)), f"knapsack at W{w}A{a}")
        study = {"n_trials": args.trials, "baselines": (), "objectives": ("od",), "min_ratio": None,
                 "max_bops": float(cost)}
        cfg = variant(b.cfg, f"wa-{args.tag}-{w}x{a}", study=study, space=space_keys)
        t0 = time.perf_counter()
        result = run_search(cfg, args.storage)
        reused = sum("reused_from" in t.user_attrs for t in result.trials)
        pick = best_pick(result.trials, cost)
        row: dict[str, Any] = {
            "budget GBOPs": round(cost / 1e9, 4),
            "= uniform": f"W{w}A{a}",
            "original": round(b.original, 2),
            "best uniform": f"W{bw}A{ba} {best_u['accuracy']:.2f}",
            "uniform - original": round(best_u["accuracy"] - b.original, 2),
            "knapsack": f"{knap['accuracy']:.2f} (OD {knap['od']:.3f})",
            "knapsack - uniform": round(knap["accuracy"] - best_u["accuracy"], 2),
            "trials (reused)": f"{len(result.trials)} ({reused})",
            "search seconds": round(time.perf_counter() - t0),
        }
        if pick is not None:
            searched = ev(policy_of(pick), f"search best OD at W{w}A{a} (trial {pick.number})")
            row["search best OD"] = f"{searched['accuracy']:.2f} (OD {searched['od']:.3f})"
            row["search - uniform"] = round(searched["accuracy"] - best_u["accuracy"], 2)
        rows.append(row)
        print(f"[{b.name}] {row}", flush=True)
    report.add(
        f"W/A budgets ({args.trials}-trial allocated searches, TPE, objective OD, max_bops = the budget; space "
        f"{space_keys}; budgets: the BOPs of uniform W/A pairs where the best uniform policy that fits loses >= {LOSS} "
        f"points and keeps > {COLLAPSE}%, the {args.budgets} cheapest). Cells: real accuracy (%).\n\n"
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
