"""Does the search pay, and how fast? Per-layer search (random, TPE, NSGA-II) against allocated search (TPE over
a global level, a rule and offsets, warm-started from the most promising policy of any rule at sizes spread over
the range), same trial budget, one run.

    python -m benchmarks.bench_search                                   # the digits ResNet (fast)
    python -m benchmarks.bench_search --models resnet_fashion separable_fashion --root data

1. Search efficiency: hypervolume of the (OD, size) front against trials and against time (the trials' own
   seconds, plus the sensitivity pass and the warm-start probes for allocated search), reference point OD 1,
   size of the original.
2. Real accuracy at size budgets (compression ratio >= R): the best-OD policy among each search's first
   --budget-trials trials, against the best uniform policy that fits (every bit width of the space, at the
   two smallest sparsities on the space's grid that reach R) and against global magnitude pruning (one
   threshold over the searched layers, at every bit width), all recovered with the same FR budget.
3. The proxy's blind spot: label-free scores on the synthetic held-out batch (OD, top-1 disagreement with the
   teacher, softmax KL, OD on intermediate features, OD + feature OD) ranked against real accuracy over every
   policy evaluated in 2 (Spearman).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial
from scipy.stats import spearmanr

from frandi_core import (
    OUTPUT,
    Policy,
    default_feature_layers,
    disagreement,
    feature_discrepancy,
    model_outputs,
    model_size,
    softmax_kl,
)
from search import AllocatedSpace, TrialRecord, TrialRunner, open_for
from studies.experiments import (
    Bench,
    Report,
    bench,
    figure,
    markdown_table,
    parse,
    parser,
    policy_of,
    run_search,
    save,
    variant,
)

METHODS = ("random", "tpe", "nsga2", "allocated")
OFFSETS = 2  # allocated: per-layer offsets for the two most sensitive layers
WARM_STARTS = 12
# the space's smallest policy (90% sparse, 3 bits, first and last layers dense 8-bit) reaches 15.6 on both
# ResNets and 6.9 on the separable net. Three budgets where the best uniform policy loses >= 2 points but some
# policy still works, then tighter ones where the best policies lose over 20 points or every one collapses (the
# goal's budgets exclude those; they are shown)
RATIOS = {
    "digits": (14.0, 14.5, 15.0),
    "resnet_fashion": (12.0, 13.0, 14.0, 15.0),
    "separable_fashion": (5.2, 5.6, 6.0, 6.4, 6.8),
}
PROXIES = ("od", "disagreement", "kl", "feature_od", "od+feature_od")


def method_config(b: Bench, method: str, n_trials: int) -> Any:
    study = {"sampler": "tpe" if method == "allocated" else method, "n_trials": n_trials, "baselines": (),
             "objectives": ("od", "size"), "min_ratio": None}
    space = {"mode": "allocated", "offsets": OFFSETS, "warm_starts": WARM_STARTS} if method == "allocated" else None
    return variant(b.cfg, f"bench-{method}-{n_trials}", study=study, space=space)


def hypervolume(points: Sequence[tuple[float, float]], ref: tuple[float, float] = (1.0, 1.0)) -> float:
    """Area dominated by 2-D points (both minimized) inside the box up to ``ref``."""
    inside = sorted((x, y) for x, y in points if x < ref[0] and y < ref[1])
    area, best_y = 0.0, ref[1]  # slabs between consecutive x, under the lowest y seen so far
    xs = [x for x, _ in inside] + [ref[0]]
    for i, (_x, y) in enumerate(inside):
        best_y = min(best_y, y)
        area += (xs[i + 1] - xs[i]) * (ref[1] - best_y)
    return area


def curve(trials: list[FrozenTrial], start_seconds: float) -> list[tuple[int, float, float]]:
    """(trials so far, seconds so far, hypervolume) after each trial, in the order they were run."""
    out, points, seconds = [], [], start_seconds
    for t in sorted(trials, key=lambda t: t.number):
        points.append((t.values[0], 1.0 / TrialRecord.from_trial(t).ratio))
        seconds += TrialRecord.from_trial(t).seconds["total"]
        out.append((len(points), seconds, hypervolume(points)))
    return out


def at(c: list[tuple[int, float, float]], n: int) -> float:
    return c[min(n, len(c)) - 1][2]


class Evaluator:
    """Real accuracy and label-free proxies of recovered policies, each policy evaluated once."""

    def __init__(self, b: Bench) -> None:
        self.b = b
        self.heldout = b.runner.heldout
        self.teacher_out = b.runner.teacher_out
        self.layers = [n for n in (b.cfg.recovery.layers or default_feature_layers(b.teacher)) if n != OUTPUT]
        self.rows: dict[Policy, dict[str, Any]] = {}

    def __call__(self, policy: Policy, label: str) -> dict[str, Any]:
        if policy not in self.rows:
            student, r = self.b.recovered(policy)
            out = model_outputs(student, self.heldout)
            feat = feature_discrepancy(self.b.teacher, student, self.heldout, self.layers)
            self.rows[policy] = {
                "policy": label,
                "ratio": round(r.ratio, 2),
                "od": round(r.od, 4),
                "kept": r.kept,
                "disagreement": round(disagreement(self.teacher_out, out), 4),
                "kl": round(softmax_kl(self.teacher_out, out), 4),
                "feature_od": round(feat, 4),
                "od+feature_od": round(r.od + feat, 4),
                "accuracy": round(self.b.accuracy(student), 2),
            }
        return self.rows[policy]


def level_policy(space: AllocatedSpace, rule: str, sparsity: float, bits: int) -> Policy:
    return space.policy(space.uniform_params(sparsity, bits, rule))


def cheapest_levels(space: AllocatedSpace, teacher: torch.nn.Module, rule: str, ratio: float, n: int) -> list[Policy]:
    """Per bit width, the ``n`` smallest grid sparsities whose policy under ``rule`` reaches ``ratio``."""
    out = []
    for bits in space.bits:
        policies = [level_policy(space, rule, s, bits) for s in space.base.grid()]
        fits = [p for p in policies if model_size(teacher, p).ratio >= ratio]
        out += fits[:n]
    return out


def run(b: Bench, args: Any, report: Report) -> None:
    n, first = args.trials, args.budget_trials
    runs: dict[str, list[FrozenTrial]] = {}
    curves: dict[str, list[tuple[int, float, float]]] = {}
    sens_seconds = warm_seconds = 0.0
    space: AllocatedSpace | None = None
    for method in args.methods:
        cfg = method_config(b, method, n)
        t0 = time.perf_counter()
        result = run_search(cfg, args.storage)
        if method == "allocated":
            with open_for(cfg, args.storage) as st:
                allocated = TrialRunner(cfg, st).space
            assert isinstance(allocated, AllocatedSpace)
            space, sens_seconds, warm_seconds = allocated, allocated.sensitivity.seconds, result.warm_seconds
        runs[method] = result.trials
        curves[method] = curve(result.trials, sens_seconds + warm_seconds if method == "allocated" else 0.0)
        print(f"[{b.name}] {method}: {len(result.trials)} trials, {time.perf_counter() - t0:.0f} s this run, "
              f"HV@30 {at(curves[method], 30):.4f} HV@{n} {at(curves[method], n):.4f}", flush=True)
    if args.searches_only or space is None:
        return
    ref = "tpe" if "tpe" in runs else next(iter(runs))  # whose median trial the sensitivity pass is set against
    trial_seconds = sorted(TrialRecord.from_trial(t).seconds["total"] for t in runs[ref])
    median = trial_seconds[len(trial_seconds) // 2]
    marks = sorted({m for m in (10, 30, 60, 90, n) if m <= n})
    rows = []
    for method, c in curves.items():
        row: dict[str, Any] = {"method": method}
        row |= {f"HV@{m}": round(at(c, m), 4) for m in marks}
        row |= {f"s@{m}": round(c[min(m, len(c)) - 1][1]) for m in marks}
        if "tpe" in curves:
            target = at(curves["tpe"], n)
            row[f"trials to TPE@{n}"] = next((k for k, _, h in c if h >= target), f">{len(c)}")
        rows.append(row)
    report.add(
        f"Search efficiency ({n} trials each, seed {b.cfg.study.seed}, no uniform baselines; allocated: TPE over "
        f"level, rule and offsets of the {OFFSETS} most sensitive layers, {WARM_STARTS} warm starts: the best "
        f"policy of any rule by OD before recovery (BN statistics re-estimated) at each of {WARM_STARTS} sizes "
        "spread evenly in ratio). "
        "Hypervolume of (OD, size / original size) up to (1, 1); s@N: seconds of the first N trials (allocated "
        f"includes the sensitivity pass and the warm-start probes). Sensitivity pass: {sens_seconds:.1f} s = "
        f"{sens_seconds / median:.2f} median {ref} trials ({median:.2f} s); warm-start probes: {warm_seconds:.1f} s "
        f"= {warm_seconds / median:.2f} median trials.\n\n" + markdown_table(rows)
    )
    ev = Evaluator(b)
    acc_rows = []
    for ratio in args.ratios:
        uniform = [ev(p, "uniform") for p in cheapest_levels(space, b.teacher, "uniform", ratio, 2)]
        glob = [ev(p, "global magnitude") for p in cheapest_levels(space, b.teacher, "global", ratio, 1)]
        row = {"budget": f"ratio >= {ratio:g}", "original": round(b.original, 2)}
        best_u = max(uniform, key=lambda r: r["accuracy"]) if uniform else None
        best_g = max(glob, key=lambda r: r["accuracy"]) if glob else None
        row["best uniform"] = _describe(best_u)
        row["uniform - original"] = "" if best_u is None else round(best_u["accuracy"] - b.original, 2)
        row["best global magnitude"] = _describe(best_g)
        for method in args.methods:
            feasible = [t for t in sorted(runs[method], key=lambda t: t.number)[:first]
                        if TrialRecord.from_trial(t).ratio >= ratio]
            if not feasible:
                row[method] = "none fits"
                continue
            t = min(feasible, key=lambda t: t.values[0])
            row[method] = _describe(ev(policy_of(t), f"{method} best OD (trial {t.number})"))
            accuracy = ev.rows[policy_of(t)]["accuracy"]
            if best_u is not None:
                row[f"{method} - uniform"] = round(accuracy - best_u["accuracy"], 2)
            if best_g is not None and method == "allocated":
                row["allocated - global"] = round(accuracy - best_g["accuracy"], 2)
        acc_rows.append(row)
    report.add(
        f"Real accuracy at size budgets: the best-OD policy among each search's first {first} trials, "
        "against the best uniform policy that fits (each bit width of the space at its two smallest grid "
        "sparsities that reach the budget) and global magnitude pruning (one threshold over the searched "
        "layers, each bit width), all recovered by the same FR. Cells: accuracy (ratio, OD).\n\n"
        + markdown_table(acc_rows, _columns(acc_rows, args.methods))
    )
    evaluated = list(ev.rows.values())
    acc = [r["accuracy"] for r in evaluated]
    corr = {p: -float(spearmanr([r[p] for r in evaluated], acc).statistic) for p in PROXIES}
    report.add(
        f"Label-free proxies on the synthetic held-out batch against real accuracy, over the {len(evaluated)} "
        "policies evaluated above (Spearman, sign flipped: +1 = lower score, higher accuracy):\n\n"
        + markdown_table([{p: round(v, 3) for p, v in corr.items()}])
        + "\n\nEvery evaluated policy:\n\n" + markdown_table(sorted(evaluated, key=lambda r: -r["ratio"]))
    )
    plot(b, curves, evaluated, report)


def _columns(rows: list[dict[str, Any]], methods: Sequence[str]) -> list[str]:
    """The accuracy table's columns in a fixed order, each present in some row (a row lacks what did not fit)."""
    order = ["budget", "original", "best uniform", "uniform - original", "best global magnitude", *methods,
             *(f"{m} - uniform" for m in methods), "allocated - global"]
    return [c for c in order if any(c in r for r in rows)]


def _describe(r: dict[str, Any] | None) -> str:
    return "none fits" if r is None else f"{r['accuracy']:.2f} ({r['ratio']:.1f}x, OD {r['od']:.3f})"


def plot(b: Bench, curves: dict[str, list[tuple[int, float, float]]], evaluated: list[dict[str, Any]],
         report: Report) -> None:
    fig, (ax1, ax2, ax3) = figure(3)
    for method, c in curves.items():
        ax1.plot([k for k, _, _ in c], [h for _, _, h in c], label=method)
        ax2.plot([s for _, s, _ in c], [h for _, _, h in c], label=method)
    ax1.set(xlabel="trials", ylabel="hypervolume (OD, size)", title=f"{b.name}: front against trials")
    ax2.set(xlabel="seconds (trials; allocated: + sensitivity pass and probes)", title="against time")
    ax1.legend(fontsize=8)
    marks = {"random": "v", "tpe": "^", "nsga2": "D", "allocated": "*"}
    kinds = [("uniform", "o"), ("global magnitude", "s")] + [(f"{m} best OD", marks[m]) for m in curves]
    for kind, marker in kinds:
        rows = [r for r in evaluated if r["policy"].startswith(kind)]
        if rows:
            ax3.scatter([r["ratio"] for r in rows], [r["accuracy"] for r in rows], marker=marker, label=kind,
                        alpha=0.7)
    ax3.axhline(b.original, color="gray", lw=0.8, ls="--")
    ax3.set(xlabel="compression ratio", ylabel="real accuracy %", title="recovered policies")
    ax3.legend(fontsize=8)
    save(fig, report.out / f"{report.name}.png")


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--trials", type=int, default=90, help="trials per search (default 90)")
    p.add_argument("--budget-trials", type=int, default=60, help="trials whose best OD is compared (default 60)")
    p.add_argument("--ratios", type=float, nargs="+", help="size budgets (default per model)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="searches to run (all four for the report; one each in parallel processes to fill the cache)")
    p.add_argument("--searches-only", action="store_true", help="run (or resume) the searches, report nothing")
    p.set_defaults(models=["digits"])
    a = parse(p, argv)
    asked = a.ratios
    for name in a.models:
        a.ratios = asked or RATIOS[name]
        with bench(name, a) as b:
            report = Report("bench_search", name, f"Search efficiency and real accuracy: {name}", Path(a.out), a.argv,
                            module="benchmarks.bench_search")
            report.setup(b, trials=a.trials, ratios=list(a.ratios))
            run(b, a, report)
            if not a.searches_only and "allocated" in a.methods:
                report.write()


if __name__ == "__main__":
    main()
