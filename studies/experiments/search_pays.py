"""Does the search pay? Real accuracy of the search's best-OD policy against uniform policies of the same size.

A study with OD as its only objective under a size budget (compression ratio >= R, an Optuna constraint)
searches per-layer sparsity and bits on synthetic data. Its lowest-OD feasible policy and the uniform
policies that reach the same ratio (same sparsity everywhere, at 8 and at 4 bits) are all recovered with
FR; their real test accuracy decides whether the label-free search chose well.

python -m studies.experiments.search_pays            # Fashion-MNIST ResNet (ratio >= 10) and separable net (>= 6)
python -m studies.experiments.search_pays --quick    # digits, a 2-trial search, ratio >= 3 (smoke test)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frandi_core import Policy
from search import TrialRecord, feasible

from ._common import Bench, Report, each_model, figure, parse, parser, policy_summary, save
from ._searches import SearchRun, policy_of, run_search, variant

UNIFORM_BITS = (8, 4)
# The separable net's fp32 BN/bias parameters and per-channel scales cap its ratio: >= 10 is out of reach
# for any policy whose pruned layers pay the 1-bit mask, so its budget is the ratio of uniform W3, about 6.5.
BUDGETS = {"separable_fashion": 6.0}
DEFAULT_BUDGET = 10.0
QUICK_RATIO = 3.0  # every 8-bit-or-less policy reaches it: the smoke test always has a feasible trial


def evaluate(b: Bench, label: str, policy: Policy) -> dict[str, Any]:
    fr, r = b.recovered(policy)
    row = {
        "model": b.name,
        "policy": label,
        **policy_summary(policy),
        "ratio": round(r.ratio, 2),
        "od_fr": round(r.od, 5),
        "original": round(b.original, 2),
        "no_recovery": round(b.accuracy(b.compressed(policy)), 2),
        "fr_synthetic": round(b.accuracy(fr), 2),
    }
    print(f"[{b.name}] {row}", flush=True)
    return row


def plot(b: Bench, run: SearchRun, rows: list[dict[str, Any]], ratio: float, path: Path) -> None:
    fig, axes = figure(1, width=5.2)
    ax = axes[0]
    ok = [t for t in run.trials if feasible(t)]
    bad = [t for t in run.trials if not feasible(t)]
    for ts, c, label in (
        (bad, "lightgray", "infeasible trials"),
        (ok, "gray", f"feasible trials (ratio >= {ratio:g})"),
    ):
        ax.scatter([TrialRecord.from_trial(t).ratio for t in ts], [t.values[0] for t in ts], s=12, c=c, label=label)
    for i, r in enumerate(rows):
        ax.scatter(
            [r["ratio"]],
            [r["od_fr"]],
            marker="*^s"[min(i, 2)],
            s=60,
            c=f"C{i + 1}",
            label=f"{r['policy']}: {r['fr_synthetic']:.1f}%",
        )
    ax.axvline(ratio, ls="--", c="gray", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("compression ratio")
    ax.set_ylabel("OD after FR (legend: real accuracy)")
    ax.set_title(f"{b.name}: search under ratio >= {ratio:g}", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, path)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__)
    p.add_argument("--ratio", type=float, help="size budget: compression ratio >= this (default: per model)")
    p.add_argument("--search-trials", type=int, default=30, help="trials of the search")
    a = parse(p, argv)
    n_search = 2 if a.quick else a.search_trials

    def model(b: Bench, report: Report) -> list[dict[str, Any]]:
        ratio = QUICK_RATIO if a.quick else a.ratio or BUDGETS.get(b.name, DEFAULT_BUDGET)
        cfg = variant(
            b.cfg,
            f"budget{ratio:g}{a.suffix}",
            study={"n_trials": n_search, "objectives": ("od",), "min_ratio": ratio, "baselines": ()},
        )
        run = run_search(cfg, a.storage)
        ok = [t for t in run.trials if feasible(t)]
        sp = cfg.space
        line = (
            f"study '{cfg.study.name}': {len(run.trials)} trials taking {run.trial_seconds:.0f} s, "
            f"{len(ok)} feasible ({run.new_trials} run now), sampler {cfg.study.sampler} seed {cfg.study.seed}, "
            "OD the only objective, "
            f"per-layer sparsity {list(sp.sparsity)} step {sp.sparsity_step} and bits {list(sp.bits)}, "
            f"first/last layers {'dense 8-bit' if sp.keep_first_last else 'searched'}, no baselines enqueued"
        )
        print(f"[{b.name}] search: {line}", flush=True)
        table = []
        if ok:
            best = min(ok, key=lambda t: t.values[0])
            table.append(evaluate(b, f"search best OD (trial {best.number})", policy_of(best)))
        for w in UNIFORM_BITS:
            table.append(evaluate(b, f"uniform W{w}", b.for_ratio(ratio, w)))
        plot(b, run, table, ratio, report.png)
        report.setup(
            b,
            budget=f"compression ratio >= {ratio:g} (nnz x bits, + 1-bit mask if pruned, + fp32 scales)",
            search=line,
            uniform=f"the same sparsity on every layer at {', '.join(f'W{w}' for w in UNIFORM_BITS)}, the "
            "sparsity found by bisection so the ratio equals the budget",
        )
        if not ok:
            report.add("The search found no feasible policy: no comparison possible.")
        report.add_results(table)
        return table

    return each_model(a, "search_pays", "Does the search pay? {name}", model)


if __name__ == "__main__":
    main()
