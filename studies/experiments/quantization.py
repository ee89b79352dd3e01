"""Data-free quantization (paper table 2): uniform W8 / W4 / W3 weights, no recovery vs FR.

Uniform: every Conv/Linear layer quantized per output channel to the same bits (dense). No recovery is
the ZeroQ-style setting (synthetic data only, to measure OD); FR recovers on the synthetic batch.
Mixed precision: a search over per-layer bits (no pruning) on the same synthetic data; for each uniform
bit-width, the front's lowest-OD policy no larger than the uniform one is recovered and its real accuracy
compared with the uniform policy's.

python -m studies.experiments.quantization            # Fashion-MNIST ResNet and separable net
python -m studies.experiments.quantization --quick    # digits, W8 and W4, a 2-trial search (smoke test)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frandi_core import Policy
from search import TrialRecord

from ._common import Bench, Report, each_model, figure, parse, parser, policy_summary, save
from ._searches import SearchRun, policy_of, run_search, variant

BITS = (8, 4, 3)
MIXED_BITS = (2, 3, 4, 6, 8)


def policy_row(b: Bench, label: str, policy: Policy) -> dict[str, Any]:
    """One table row: size, and real accuracy with no recovery and after FR on synthetic data."""
    fr, r = b.recovered(policy)
    row = {
        "model": b.name,
        "policy": label,
        "size_kib": round(r.size_bits / 8192, 2),
        "ratio": round(r.ratio, 2),
        "original": round(b.original, 2),
        "no_recovery": round(b.accuracy(b.compressed(policy)), 2),
        "fr_synthetic": round(b.accuracy(fr), 2),
        "od_none": round(r.od_before, 5),
        "od_fr": round(r.od, 5),
    }
    print(f"[{b.name}] {row}", flush=True)
    return row


def uniform_rows(b: Bench, bits: Sequence[int]) -> list[dict[str, Any]]:
    return [policy_row(b, f"uniform W{w}", b.uniform(0.0, w)) for w in bits]


def mixed_rows(b: Bench, run: SearchRun, uniform: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each uniform bit-width, the front's lowest-OD policy that is no larger, recovered with FR."""
    rows: list[dict[str, Any]] = []
    chosen: set[int] = set()
    for u in sorted(uniform, key=lambda u: u["size_kib"]):
        budget = u["size_kib"] * 8192
        fits = [t for t in run.front if TrialRecord.from_trial(t).size_bits <= budget + 0.5]
        if not fits:
            continue
        t = min(fits, key=lambda t: t.values[0])
        if t.number in chosen:  # a larger budget picked the same policy: one row is enough
            continue
        chosen.add(t.number)
        policy = policy_of(t)
        label = f"mixed <= {u['policy'].split()[-1]} (trial {t.number}, bits {policy_summary(policy)['bits']})"
        rows.append(policy_row(b, label, policy))
    return rows


def plot(
    b: Bench, uniform: list[dict[str, Any]], mixed: list[dict[str, Any]], run: SearchRun | None, path: Path
) -> None:
    fig, axes = figure(1, width=5.2)
    ax = axes[0]
    if run is not None:
        sizes = {t.number: TrialRecord.from_trial(t).size_bits / 8192 for t in run.trials}
        ax.scatter(
            [sizes[t.number] for t in run.trials],
            [t.values[0] for t in run.trials],
            s=12,
            c="lightgray",
            label="search trials",
        )
        ax.plot(
            [sizes[t.number] for t in run.front],
            [t.values[0] for t in run.front],
            "-o",
            ms=3,
            c="gray",
            label="search front",
        )
    ax.scatter(
        [u["size_kib"] for u in uniform], [u["od_fr"] for u in uniform], marker="s", c="C0", label="uniform W8/W4/W3"
    )
    for u in uniform:
        ax.annotate(f"{u['policy'].split()[-1]} {u['fr_synthetic']:.1f}%", (u["size_kib"], u["od_fr"]), fontsize=7)
    ax.scatter([m["size_kib"] for m in mixed], [m["od_fr"] for m in mixed], marker="^", c="C3", label="mixed (chosen)")
    for m in mixed:
        ax.annotate(f"{m['fr_synthetic']:.1f}%", (m["size_kib"], m["od_fr"]), fontsize=7, color="C3")
    ax.set_yscale("log")
    ax.set_xlabel("model size (KiB)")
    ax.set_ylabel("OD after FR (labels: real accuracy)")
    ax.set_title(f"{b.name}: weight quantization", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, path)


def mixed_search(b: Bench, n_trials: int, storage: str | None, suffix: str = "") -> tuple[SearchRun, str]:
    """Search per-layer bits (no pruning) for OD and size; returns the run and a line describing it."""
    cfg = variant(
        b.cfg,
        "mixed" + suffix,
        study={"n_trials": n_trials, "objectives": ("od", "size"), "min_ratio": None, "baselines": (0.0,)},
        space={"sparsity": (0.0, 0.0), "bits": MIXED_BITS},
    )
    run = run_search(cfg, storage)
    line = (
        f"study '{cfg.study.name}': {len(run.trials)} trials taking {run.trial_seconds:.0f} s "
        f"({run.new_trials} run now), sampler {cfg.study.sampler} seed {cfg.study.seed}, "
        f"per-layer bits {list(MIXED_BITS)}, no pruning, first and last layers 8-bit, uniform-bit baselines "
        "enqueued first"
    )
    print(f"[{b.name}] mixed-precision search: {line}", flush=True)
    return run, line


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__)
    p.add_argument("--search-trials", type=int, default=24, help="trials of the mixed-precision search (0: skip it)")
    a = parse(p, argv)
    bits = BITS[:2] if a.quick else BITS
    n_search = 2 if a.quick else a.search_trials

    def model(b: Bench, report: Report) -> list[dict[str, Any]]:
        uniform = uniform_rows(b, bits)
        run, line, mixed = None, "skipped (--search-trials 0)", []
        if n_search > 0:
            run, line = mixed_search(b, n_search, a.storage, a.suffix)
            mixed = mixed_rows(b, run, uniform)
        plot(b, uniform, mixed, run, report.png)
        report.setup(b, quantization="symmetric per-output-channel weight quantization; activations fp32", search=line)
        report.add_results(uniform + mixed)
        return uniform + mixed

    return each_model(a, "quantization", "Data-free quantization: {name}", model)


if __name__ == "__main__":
    main()
