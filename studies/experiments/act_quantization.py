"""Weights and activations quantized (paper table 2, the setting of ZeroQ, GDFQ, Genie): W8A8, W6A6, W4A8, W4A4.

Uniform: every Conv/Linear layer at the same weight and input-activation bits, except the first and last layers at
W8A8 (as a study's keep_first_last, and as ZeroQ / Genie report 4-bit results). Activation ranges are calibrated
on the synthetic recovery batch by each calibration method; then real test accuracy (a) with no recovery (the ZeroQ
setting: synthetic data for calibration only), (b) after FR, (c) after FR that also learns the activation step
sizes (LSQ-style). Then a search under a BOPs budget (the BOPs of uniform W4A8; per-layer weight and activation
bits, no pruning) against the uniform policy of that budget.

python -m studies.experiments.act_quantization            # Fashion-MNIST ResNet and separable net
python -m studies.experiments.act_quantization --quick    # digits, W8A8 and W4A4, one calibration, 2-trial search
python -m studies.experiments.act_quantization --search-only --budgets W4A4   # only a search at W4A4's BOPs
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frandi_core import CALIBRATIONS, Policy, bops
from search import TrialRecord, feasible, replace

from ._common import Bench, Report, each_model, figure, parse, parser, save
from ._searches import SearchRun, policy_of, run_search, variant

SETTINGS = ((8, 8), (6, 6), (4, 8), (4, 4))  # (weight bits, activation bits)
SEARCH_BITS = (2, 3, 4, 6, 8)  # per-layer weight and activation bits the BOPs-budget search chooses from
BUDGETS = ("W4A8", "W4A4")  # the searches' BOPs budgets: those of these uniform settings


def setting(text: str) -> tuple[int, int]:
    """'W4A8' -> (4, 8)."""
    w, _, a = text.upper().removeprefix("W").partition("A")
    return int(w), int(a)


def uniform(b: Bench, w: int, a: int) -> Policy:
    """W``w``A``a`` on every layer, the first and last at W8A8."""
    names = [n for n, _ in b.uniform().layers]
    edge = {names[0], names[-1]}
    return Policy.from_dict({n: {"bits": 8 if n in edge else w, "act_bits": 8 if n in edge else a} for n in names})


def evaluate(b: Bench, label: str, policy: Policy, calibration: str, role: str = "") -> dict[str, Any]:
    """Real accuracy with no recovery, after FR, after FR with learned steps; OD of each."""
    none = b.compressed(policy, calibration)
    row = {"model": b.name, "policy": label, "calibration": calibration, "role": role}
    row |= {"gbops": round(bops(b.runner.macs, policy) / 1e9, 4), "original": round(b.original, 2)}
    row["no_recovery"] = round(b.accuracy(none), 2)
    for key, learn in (("fr", False), ("fr_lsq", True)):
        runner = copy.copy(b.runner)  # shares the teacher, batches and targets; another [recovery]
        runner.cfg = replace(b.cfg, "recovery", calibration=calibration, learn_act_steps=learn)
        student, r = runner.student(policy)
        row[key] = round(b.accuracy(student), 2)
        row[f"od_{key}"] = round(r.od, 5)
    row["od_none"] = round(r.od_before, 5)
    print(f"[{b.name}] {row}", flush=True)
    return row


def budget_search(
    b: Bench, name: str, budget: int, n_trials: int, storage: str | None, suffix: str
) -> tuple[SearchRun, str]:
    """OD alone under bops <= budget, per-layer weight and activation bits, no pruning; study <model>-<name>."""
    cfg = variant(
        b.cfg,
        f"{name}{suffix}",
        study={"n_trials": n_trials, "objectives": ("od",), "min_ratio": None, "max_bops": float(budget)}
        | {"baselines": ()},
        space={"sparsity": (0.0, 0.0), "bits": SEARCH_BITS, "act_bits": SEARCH_BITS},
    )
    run = run_search(cfg, storage)
    ok = [t for t in run.trials if feasible(t)]
    line = (
        f"study '{cfg.study.name}': {len(run.trials)} trials taking {run.trial_seconds:.0f} s, {len(ok)} feasible "
        f"({run.new_trials} run now), sampler {cfg.study.sampler} seed {cfg.study.seed}, OD the only objective, "
        f"BOPs <= {budget / 1e9:.4f} G, per-layer weight and activation bits {list(SEARCH_BITS)}, no pruning, "
        f"first and last layers W8A8, calibration {cfg.recovery.calibration}, learned steps "
        f"{cfg.recovery.learn_act_steps}, no baselines enqueued"
    )
    print(f"[{b.name}] BOPs-budget search: {line}", flush=True)
    return run, line


def plot(b: Bench, rows: list[dict[str, Any]], runs: list[SearchRun], path: Path) -> None:
    """Left (if there is a uniform table): accuracy per setting and calibration. Right: the searches' trials and
    the policies compared, after the recovery the searches used."""
    table = [r for r in rows if not r["role"]]
    fig, axes = figure(2 if table else 1, width=5.0)
    if table:
        labels = list(dict.fromkeys(r["policy"] for r in table))
        for j, key in enumerate(("no_recovery", "fr", "fr_lsq")):
            for i, c in enumerate(sorted({r["calibration"] for r in table})):
                ys = [next(r[key] for r in table if r["policy"] == p and r["calibration"] == c) for p in labels]
                axes[0].plot(labels, ys, ["o--", "s-", "^-"][j], c=f"C{i}", ms=4, label=f"{key}, {c}")
        axes[0].axhline(b.original, c="gray", lw=1, ls=":")
        axes[0].set_ylabel("real test accuracy (%)")
        axes[0].set_title(f"{b.name}: uniform weights + activations", fontsize=9)
        axes[0].legend(fontsize=6)
    ax = axes[-1]
    trials = [t for run in runs for t in run.trials]
    for ok, c, label in ((False, "lightgray", "over its budget"), (True, "gray", "within its budget")):
        ts = [t for t in trials if feasible(t) == ok]
        gbops = [(TrialRecord.from_trial(t).bops or 0.0) / 1e9 for t in ts]
        ax.scatter(gbops, [t.values[0] for t in ts], s=12, c=c, label=label)
    acc = "fr_lsq" if b.cfg.recovery.learn_act_steps else "fr"
    for i, r in enumerate(r for r in rows if r["role"]):
        label = f"{r['policy']}: {r[acc]:.1f}%"
        ax.scatter([r["gbops"]], [r[f"od_{acc}"]], marker="*^"[i % 2], s=60, c=f"C{i + 1}", label=label)
    ax.set_xlabel("GBOPs")
    ax.set_ylabel(f"OD after {acc} (legend: real accuracy)")
    ax.set_yscale("log")
    ax.set_title(f"{b.name}: searches under a BOPs budget", fontsize=9)
    ax.legend(fontsize=6)
    save(fig, path)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__)
    p.add_argument("--search-trials", type=int, default=24, help="trials of the BOPs-budget search (0: skip it)")
    p.add_argument("--calibrations", nargs="+", choices=sorted(CALIBRATIONS), default=list(CALIBRATIONS))
    p.add_argument("--budgets", nargs="+", default=list(BUDGETS), help="BOPs budgets of the searches, as uniform WxAy")
    p.add_argument("--search-only", action="store_true", help="no uniform table; files act_quantization_search_*")
    a = parse(p, argv)
    settings = [] if a.search_only else ((8, 8), (4, 4)) if a.quick else SETTINGS
    calibrations = a.calibrations[:1] if a.quick else a.calibrations
    n_search = 2 if a.quick else a.search_trials
    prefix = "search_" if a.search_only else ""  # files act_quantization_search_<model>.*

    def model(b: Bench, report: Report) -> list[dict[str, Any]]:
        table = [evaluate(b, f"uniform W{w}A{x}", uniform(b, w, x), c) for w, x in settings for c in calibrations]
        runs, lines = [], ["skipped (--search-trials 0)"] if n_search <= 0 else []
        for text in a.budgets if n_search > 0 else []:
            w, x = setting(text)
            budget = bops(b.runner.macs, uniform(b, w, x))
            run, line = budget_search(b, f"bops-w{w}a{x}", budget, n_search, a.storage, a.suffix)
            runs.append(run)
            lines.append(line)
            ok = [t for t in run.trials if feasible(t)]
            c = b.cfg.recovery.calibration
            if ok:
                best = min(ok, key=lambda t: t.values[0])
                label = f"search best OD under W{w}A{x} BOPs (trial {best.number})"
                table.append(evaluate(b, label, policy_of(best), c, "search"))
            table.append(evaluate(b, f"uniform W{w}A{x} (the budget)", uniform(b, w, x), c, "uniform"))
        plot(b, table, runs, report.png)
        report.setup(
            b,
            quantization="weights symmetric per output channel; input activations per tensor, unsigned after a "
            "ReLU, signed otherwise; first and last layers W8A8; ranges from the synthetic recovery batch",
            search="; ".join(lines),
        )
        report.add_results(table)
        return table

    return each_model(a, "act_quantization", "Weights and activations: {name}", model, prefix=prefix)


if __name__ == "__main__":
    main()
